// Enqueue idvcancel.process from Node with celery-node, the way a Node service would.
//
//   node enqueue.js BROKER_URL BACKEND_URL 'REQUEST_JSON'   → prints the Celery task id
//
// BROKER_URL is redis://… (celery-node pushes onto the Redis list named after the queue)
// or amqp://… (it publishes through the default exchange with the queue's name as the
// routing key). Either way the queue must be "idvcancel", the task name
// "idvcancel.process", and the request the one positional argument.
"use strict";

const celery = require("celery-node");

// On RabbitMQ, celery-node declares the queue before each publish with no arguments, and
// RabbitMQ refuses a declaration that differs from the existing quorum queue's
// (PRECONDITION_FAILED). A Node service passes the worker's arguments instead
// (README "Producers"; config/broker.py). The delivery limit must be the workers' too.
const deliveryLimit = Number(process.env.IDVCANCEL_DELIVERY_LIMIT || 10);
const QUEUE_ARGUMENTS = {
  "x-queue-type": "quorum",
  "x-delivery-limit": deliveryLimit,
  "x-dead-letter-exchange": "idvcancel.dead",
  "x-dead-letter-routing-key": "idvcancel.dead",
  "x-dead-letter-strategy": "at-least-once",
  "x-overflow": "reject-publish",
};

// Must be in place before celery-node's own first declaration (in isReady).
async function declareLikeTheWorker(client) {
  const channel = await client.broker.channel;
  const assertQueue = channel.assertQueue.bind(channel);
  channel.assertQueue = (name, options) =>
    assertQueue(name, name === "idvcancel" ? { ...options, arguments: QUEUE_ARGUMENTS } : options);
  // Resolves once celery-node has handed the message to the channel (wrapped in an
  // object: an awaited promise would be waited for here).
  const publish = channel.publish.bind(channel);
  const handedOver = new Promise((resolve) => {
    channel.publish = (...args) => {
      const written = publish(...args);
      resolve();
      return written;
    };
  });
  return { handedOver };
}

async function main() {
  const [brokerUrl, backendUrl, requestJson] = process.argv.slice(2);
  if (!brokerUrl || !backendUrl || !requestJson) {
    console.error("usage: node enqueue.js BROKER_URL BACKEND_URL 'REQUEST_JSON'");
    process.exit(2);
  }
  const client = celery.createClient(brokerUrl, backendUrl, "idvcancel");
  const published = brokerUrl.startsWith("amqp") ? await declareLikeTheWorker(client) : null;
  await client.isReady();
  const result = client.createTask("idvcancel.process").applyAsync([JSON.parse(requestJson)]);
  if (published) {
    // The publish frame is written before the close that disconnect() sends.
    await published.handedOver;
  } else {
    // applyAsync publishes on a promise it does not return; once the broker is ready that
    // promise settles within this turn, so one macrotask later the LPUSH is queued on the
    // connection ahead of the QUIT that disconnect() sends.
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  await client.disconnect();
  console.log(result.taskId);
}

main().catch((err) => {
  console.error(`enqueue failed: ${err}`);
  process.exit(1);
});
