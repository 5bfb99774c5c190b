// bbc/sqs-consumer completing Step Functions tasks with @aws-sdk/client-sfn.
//
//   node consumer.mjs --mode default|batch10|tuned [--consumers K]
//   node consumer.mjs --floor N        (CPU per bare SendTaskSuccess, printed as JSON)
//
// Env: BENCH_ENDPOINT (the stub), BENCH_QUEUE_URL.  Runs until SIGTERM (consumer modes).
// Modes, as stated in the benchmark table:
//   default  library defaults: handleMessage, batchSize 1, one consumer
//   batch10  handleMessage, batchSize 10 (messages of a batch handled concurrently)
//   tuned    handleMessageBatch with the batch's completions concurrent (Promise.all),
//            batchSize 10, K consumers on the queue in this process, a larger socket pool
import http from "node:http";
import { SFNClient, SendTaskSuccessCommand } from "@aws-sdk/client-sfn";
import { SQSClient } from "@aws-sdk/client-sqs";
import { Consumer } from "sqs-consumer";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const endpoint = process.env.BENCH_ENDPOINT;
const queueUrl = process.env.BENCH_QUEUE_URL;
const mode = args.mode ?? "default";
const consumers = Number(args.consumers ?? (mode === "tuned" ? 10 : 1));
const OUTPUT = JSON.stringify({ body: "Return from callback" });

function clientOptions(sockets) {
  const options = {
    endpoint,
    region: "us-east-1",
    credentials: { accessKeyId: "x", secretAccessKey: "x" },
  };
  if (sockets) {
    // The SDK's default agent allows 50 sockets; tuned runs keep more calls in flight.
    options.requestHandler = {
      httpAgent: new http.Agent({ keepAlive: true, maxSockets: sockets }),
    };
  }
  return options;
}

async function floor(count) {
  const sfn = new SFNClient(clientOptions());
  const reply = await fetch(`${endpoint}/_stub/tasks`);
  const tokens = Object.entries(await reply.json())
    .filter(([, task]) => task.status === "open")
    .map(([token]) => token)
    .slice(0, count + 50);
  // Warm up (connection, lazy module loading) before measuring.
  for (const token of tokens.slice(0, 50)) {
    await sfn.send(new SendTaskSuccessCommand({ taskToken: token, output: OUTPUT }));
  }
  const measured = tokens.slice(50);
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  for (const token of measured) {
    await sfn.send(new SendTaskSuccessCommand({ taskToken: token, output: OUTPUT }));
  }
  const cpu = process.cpuUsage(cpu0);
  const wall = performance.now() - wall0;
  console.log(
    JSON.stringify({
      calls: measured.length,
      cpu_ms_per_call: (cpu.user + cpu.system) / 1000 / measured.length,
      calls_per_s: (measured.length * 1000) / wall,
    }),
  );
}

function consume() {
  const sockets = mode === "tuned" ? Math.max(64, consumers * 12) : undefined;
  const sqs = new SQSClient(clientOptions(sockets));
  const sfn = new SFNClient(clientOptions(sockets));
  const complete = async (message) => {
    const token = JSON.parse(message.Body).taskToken;
    await sfn.send(new SendTaskSuccessCommand({ taskToken: token, output: OUTPUT }));
    return message;
  };
  const options = { queueUrl, sqs };
  if (mode === "tuned") {
    options.batchSize = 10;
    options.strictReturn = true;
    options.handleMessageBatch = (messages) => Promise.all(messages.map(complete));
  } else {
    if (mode === "batch10") options.batchSize = 10;
    options.handleMessage = complete;
  }
  const running = [];
  for (let i = 0; i < consumers; i++) {
    const consumer = Consumer.create(options);
    consumer.on("error", (err) => console.error(`consumer error: ${err.name}`));
    consumer.on("processing_error", (err) => console.error(`processing error: ${err.name}`));
    consumer.start();
    running.push(consumer);
  }
  const stop = () => {
    for (const consumer of running) consumer.stop({ abort: true });
    setTimeout(() => process.exit(0), 100).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

if (args.floor) {
  await floor(Number(args.floor));
} else {
  consume();
}
