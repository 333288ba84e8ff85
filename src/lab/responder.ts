/**
 * `citus-controller lab responder` (started by `lab up --vips` inside each member's network
 * namespace): answers on every address of the namespace, so that a client namespace can tell
 * who holds a VIP and use it. Port 7777: one line, the member's name, then close. Port 5432:
 * forwarded byte for byte to the member's PostgreSQL unix socket (PostgreSQL listens on loopback
 * in the root namespace; a unix socket is reachable from any network namespace).
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { NAME_PORT, PG_FORWARD_PORT } from './vips.js';

function listen(server: Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host: '0.0.0.0' }, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function forward(client: Socket, pgSocket: string): void {
  const upstream = createConnection({ path: pgSocket });
  const end = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', end);
  upstream.on('error', end);
  client.on('close', end);
  upstream.on('close', end);
  client.pipe(upstream);
  upstream.pipe(client);
}

/** Runs until SIGTERM/SIGINT; `onReady` once both ports listen. */
export async function runResponder(o: { name: string; pgSocket: string; onReady: (line: string) => void }): Promise<void> {
  const names = createServer((s) => {
    s.on('error', () => s.destroy());
    s.end(`${o.name}\n`);
  });
  const pg = createServer((s) => forward(s, o.pgSocket));
  await listen(names, NAME_PORT);
  await listen(pg, PG_FORWARD_PORT);
  o.onReady(`responder ${o.name}: answering on port ${NAME_PORT} (name) and ${PG_FORWARD_PORT} (-> ${o.pgSocket})`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      names.close();
      pg.close();
      resolve();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}
