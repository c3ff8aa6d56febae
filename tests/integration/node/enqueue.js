// Enqueue idvcancel.process from Node with celery-node, the way a Node service would.
//
//   node enqueue.js REDIS_URL 'REQUEST_JSON'   → prints the Celery task id
//
// celery-node (protocol 2) pushes the message onto the Redis list named after the queue,
// through the default exchange: the queue must be "idvcancel", the task name
// "idvcancel.process", and the request the one positional argument.
"use strict";

const celery = require("celery-node");

async function main() {
  const [brokerUrl, requestJson] = process.argv.slice(2);
  if (!brokerUrl || !requestJson) {
    console.error("usage: node enqueue.js REDIS_URL 'REQUEST_JSON'");
    process.exit(2);
  }
  const client = celery.createClient(brokerUrl, brokerUrl, "idvcancel");
  await client.isReady();
  const result = client.createTask("idvcancel.process").applyAsync([JSON.parse(requestJson)]);
  // applyAsync publishes on a promise it does not return; once the broker is ready that
  // promise settles within this turn, so one macrotask later the LPUSH is queued on the
  // connection ahead of the QUIT that disconnect() sends.
  await new Promise((resolve) => setTimeout(resolve, 0));
  await client.disconnect();
  console.log(result.taskId);
}

main().catch((err) => {
  console.error(`enqueue failed: ${err}`);
  process.exit(1);
});
