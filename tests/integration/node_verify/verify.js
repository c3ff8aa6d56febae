#!/usr/bin/env node
// Verifies an idv-cancel audit archive with nothing of idv-cancel's code: Node's own
// crypto (SHA-256, Ed25519) and the npm package `canonicalize` (RFC 8785). The
// algorithm is docs/audit.md; this is the proof that another language recomputes it.
//
//   node verify.js --public-key audit-public.pem --checkpoints DIR/checkpoints.jsonl \
//       DIR/audit-*.jsonl
//
// Prints one JSON object ({"ok", "records", "checkpoints", "roots", "failure"}) and
// exits 0 when every record and checkpoint verifies, 1 naming the first that does not.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const canonicalize = require('canonicalize');

const sha256 = (data) => crypto.createHash('sha256').update(data).digest();
const jcs = (value) => Buffer.from(canonicalize(value), 'utf8');
const without = (object, key) => { const copy = { ...object }; delete copy[key]; return copy; };
const lines = (file) => fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim())
  .map((l) => JSON.parse(l));

// RFC 9162 §2.1.1: leaf = SHA-256(0x00 ‖ d), node = SHA-256(0x01 ‖ left ‖ right).
function mth(leaves) {
  if (leaves.length === 1) return sha256(Buffer.concat([Buffer.from([0]), leaves[0]]));
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return sha256(Buffer.concat([Buffer.from([1]), mth(leaves.slice(0, k)), mth(leaves.slice(k))]));
}

function main(argv) {
  const args = { files: [] };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--public-key') args.key = argv[(i += 1)];
    else if (argv[i] === '--checkpoints') args.checkpoints = argv[(i += 1)];
    else args.files.push(argv[i]);
  }
  const key = crypto.createPublicKey(fs.readFileSync(args.key, 'utf8'));
  const raw = key.export({ format: 'der', type: 'spki' }).subarray(-32); // Ed25519 SPKI
  const keyId = sha256(raw).toString('hex').slice(0, 16);

  // The chain: every record's own hash, its link and its seq; copies (ids seen) skipped.
  const records = [];
  const seen = new Set();
  let prev = '0'.repeat(64);
  for (const file of args.files) {
    lines(file).forEach((line, n) => {
      if (seen.has(line.id)) return;
      seen.add(line.id);
      const { record } = line;
      const where = `${file}:${n + 1} (seq ${record.seq})`;
      if (record.v !== 2) throw new Error(`${where}: not a version 2 record`);
      if (sha256(jcs(without(record, 'hash'))).toString('hex') !== record.hash) {
        throw new Error(`${where}: its hash does not match its content`);
      }
      if (record.prev_hash !== prev || record.seq !== records.length + 1) {
        throw new Error(`${where}: it does not follow the record before it`);
      }
      prev = record.hash;
      records.push(record);
    });
  }

  // The checkpoints: signature, key, link to the one before, and the Merkle root.
  const roots = [];
  let before = null;
  for (const [n, checkpoint] of lines(args.checkpoints).entries()) {
    const where = `checkpoint #${n + 1} (records ${checkpoint.first_seq}..${checkpoint.seq})`;
    const signature = Buffer.from(checkpoint.signature, 'base64');
    if (checkpoint.key_id !== keyId
        || !crypto.verify(null, jcs(without(checkpoint, 'signature')), key, signature)) {
      throw new Error(`${where}: its signature does not verify with this key`);
    }
    const link = before === null ? '0'.repeat(64) : sha256(jcs(before)).toString('hex');
    const first = before === null ? 1 : before.seq + 1;
    if (checkpoint.prev_checkpoint !== link || checkpoint.first_seq !== first) {
      throw new Error(`${where}: it does not follow the checkpoint before it`);
    }
    const covered = records.slice(checkpoint.first_seq - 1, checkpoint.seq);
    if (covered.length !== checkpoint.seq - checkpoint.first_seq + 1) {
      throw new Error(`${where}: the chain ends before record ${checkpoint.seq}`);
    }
    const root = mth(covered.map((r) => Buffer.from(r.hash, 'hex'))).toString('hex');
    if (root !== checkpoint.merkle_root || covered[covered.length - 1].hash !== checkpoint.head) {
      throw new Error(`${where}: the records do not match its Merkle root`);
    }
    roots.push(root);
    before = checkpoint;
  }
  return { records: records.length, checkpoints: roots.length, roots };
}

try {
  console.log(JSON.stringify({ ok: true, ...main(process.argv.slice(2)), failure: null }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, failure: error.message }));
  process.exitCode = 1;
}
