// A Node.js caller of scout: one Execute, one Execute with an idempotency key (retried with the
// same key), one Stream, one Download, one ListHosts. The contract is loaded from protos/ at run
// time, so there is no generated code to keep in step.
//
//   npm ci
//   node client.js [ADDRESS [HOST]]     (defaults: 127.0.0.1:50051, the demo's host "local")
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [address = '127.0.0.1:50051', host = 'local'] = process.argv.slice(2);

const definition = protoLoader.loadSync('scout/v1/exec.proto', {
  includeDirs: [path.join(__dirname, '..', '..', 'protos')],
  keepCase: true, // field names as in the .proto: exit_code, stdout_bytes
  defaults: true, // a field the server left out (proto3 omits zeros) reads as 0, '' or false
  longs: Number, // uint64 byte counts as plain numbers
  oneofs: true, // message.event names the field of the oneof that is set
});
const { ExecService } = grpc.loadPackageDefinition(definition).scout.v1;
const client = new ExecService(address, grpc.credentials.createInsecure());

// Every call names its host in metadata too: proxies in front of several scout
// replicas route by it, so that each host's warm SSH connections live on one replica.
function callOptions() {
  const metadata = new grpc.Metadata();
  metadata.set('x-scout-host', host);
  return [metadata, { deadline: Date.now() + 30_000 }];
}

// Execute: run a command, wait for it, get its output and exit status in one response.
// A non-zero exit is an answer, not an error; errors mean scout could not run it.
function execute(command) {
  return new Promise((resolve, reject) => {
    const request = { host, command, timeout: { seconds: 10 } };
    client.Execute(request, ...callOptions(), (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// Execute with an idempotency key, retried with backoff while its fate is unknown to us. With a
// key the command runs at most once: a retry waits for the run in progress or gets the outcome
// it recorded (trailing metadata `x-scout-replayed: true`), so retrying cannot run it twice.
// Retried: UNAVAILABLE (a dropped connection, a server restarting, the outcome store down: scout
// says x-scout-started: false then) and CANCELLED or ABORTED without scout's x-scout-started
// mark (the transport's, not scout's answer). Final: every other status scout decided, above
// all ABORTED with x-scout-started: true, "outcome unknown" (the run under the key started and
// its process died): the same key gets that same answer forever, nothing runs again.
function retryable(err) {
  const marked = err.metadata !== undefined && err.metadata.get('x-scout-started').length > 0;
  if (err.code === grpc.status.UNAVAILABLE) return true;
  return !marked && (err.code === grpc.status.CANCELLED || err.code === grpc.status.ABORTED);
}

function executeOnce(request) {
  return new Promise((resolve, reject) => {
    let response;
    const call = client.Execute(request, ...callOptions(), (err, reply) => {
      if (err) reject(err);
      response = reply;
    });
    // The status (with the trailing metadata) comes right after the callback.
    call.on('status', (status) => {
      if (status.code !== grpc.status.OK) return;
      const replayed = status.metadata.get('x-scout-replayed').includes('true');
      resolve({ response, replayed });
    });
  });
}

async function executeWithKey(command, key, attempts = 5) {
  const request = { host, command, timeout: { seconds: 10 }, idempotency_key: key };
  for (let attempt = 1, wait = 200; ; attempt++, wait = Math.min(wait * 2, 5_000)) {
    try {
      return await executeOnce(request);
    } catch (err) {
      if (attempt >= attempts || !retryable(err)) throw err;
      await new Promise((done) => setTimeout(done, wait * (0.8 + 0.4 * Math.random())));
    }
  }
}

// Stream: output arrives as it is produced. Response headers mean "the command started":
// write stdin after them, then half-close (end), which is EOF for the command's stdin.
function stream(command, input) {
  return new Promise((resolve, reject) => {
    const call = client.Stream(...callOptions());
    let exit;
    call.on('metadata', () => {
      call.write({ stdin: Buffer.from(input) });
      call.end();
    });
    call.on('data', (message) => {
      if (message.event === 'stdout') process.stdout.write(message.stdout);
      if (message.event === 'stderr') process.stderr.write(message.stderr);
      if (message.event === 'exit') exit = message.exit;
    });
    call.on('error', reject);
    call.on('end', () => resolve(exit));
    call.write({ start: { host, command, timeout: { seconds: 10 } } });
  });
}

// Download: a file's bytes in order (here the first `length` of them), then an `end` message
// with the file's size, mode, mtime and the SHA-256 of what was sent, to check against.
function download(file, length) {
  return new Promise((resolve, reject) => {
    const call = client.Download({ host, path: file, length }, ...callOptions());
    const chunks = [];
    let end;
    call.on('data', (message) => {
      if (message.event === 'chunk') chunks.push(message.chunk);
      if (message.event === 'end') end = message.end;
    });
    call.on('error', reject);
    call.on('end', () => resolve({ data: Buffer.concat(chunks), end }));
  });
}

// ListHosts: the inventory, with labels and the pool's view of each host.
function listHosts(selector) {
  return new Promise((resolve, reject) => {
    client.ListHosts({ selector }, ...callOptions(), (err, response) =>
      err ? reject(err) : resolve(response.hosts),
    );
  });
}

async function main() {
  const result = await execute('echo "Execute ran on $(uname -s)"; exit 3');
  process.stdout.write(result.stdout); // bytes, as the command wrote them
  console.log(`Execute: exit code ${result.exit_code}`);

  // A key of our own (1-128 of A-Z a-z 0-9 . _ : -); sending it again is how a retry says
  // "the same command, not a new one".
  const key = `node-example-${crypto.randomUUID()}`;
  const first = await executeWithKey('echo "keyed run on $(uname -s)"', key);
  const again = await executeWithKey('echo "keyed run on $(uname -s)"', key);
  const same = Buffer.compare(first.response.stdout, again.response.stdout) === 0;
  const what = (run) => (run.replayed ? 'replayed' : 'ran');
  console.log(`Execute with a key: ${what(first)}, then ${what(again)} (same output: ${same})`);

  const exit = await stream('tr a-z A-Z', 'hello from node\n');
  console.log(`Stream: exit code ${exit.exit_code}, ${exit.stdout_bytes} bytes of stdout`);

  const { data, end } = await download('/etc/passwd', 5);
  const digest = crypto.createHash('sha256').update(data).digest('hex');
  const check = digest === end.sha256 ? 'sha256 matches' : 'sha256 DIFFERS';
  console.log(`Download: ${JSON.stringify(data.toString())} of /etc/passwd, ${check}`);

  const hosts = await listHosts('');
  console.log(`ListHosts: ${hosts.map((h) => `${h.name} (${h.connections_open} open)`).join(', ')}`);
}

main()
  .catch((err) => {
    const status = err.code === undefined ? '' : `${grpc.status[err.code]}: `;
    console.error(`scout: ${status}${err.details ?? err.message}`);
    process.exitCode = 1;
  })
  .finally(() => client.close());
