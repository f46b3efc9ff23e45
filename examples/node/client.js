// A Node.js caller of scout: one Execute, one Stream, one Download, one ListHosts. The contract
// is loaded from
// protos/ at run time, so there is no generated code to keep in step.
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
