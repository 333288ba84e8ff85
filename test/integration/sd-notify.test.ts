/**
 * systemd notifications of `watch` (src/runtime/sd-notify.ts, Daemon) against a real AF_UNIX
 * datagram socket standing in for systemd's NOTIFY_SOCKET (a python3 receiver started here, as
 * Node has no such sockets): READY=1, WATCHDOG=1 every WATCHDOG_USEC/2 while healthy, none while a
 * pass hangs, STOPPING=1 on stop. The daemon's controller and keeper are fakes: this is about the
 * notifications only.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Daemon, type PassRunner } from '../../src/runtime/daemon.js';
import { watchdogHealthy, watchdogIntervalMs } from '../../src/runtime/sd-notify.js';
import type { PassOutcome } from '../../src/runtime/outcome.js';
import type { TopologySource } from '../../src/topology/reader.js';
import type { Topology } from '../../src/topology/model.js';
import { CN, topo, WK1 } from '../helpers/builders.js';
import { testConfig } from '../helpers/config.js';
import { captureLog } from '../helpers/log.js';
import { waitFor } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'cc-sdnotify-'));
const sock = join(dir, 'notify.sock');
const received = join(dir, 'received.txt');
let receiver: ChildProcess;

before(async () => {
  const py = [
    'import socket, sys',
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    `s.bind(${JSON.stringify(sock)})`,
    `f = open(${JSON.stringify(received)}, 'a', buffering=1)`,
    'while True:',
    '    d = s.recv(4096).decode()',
    "    f.write(d.replace('\\n', '|') + '\\n')",
  ].join('\n');
  receiver = spawn('python3', ['-u', '-c', py], { stdio: 'ignore' });
  await waitFor(() => existsSync(sock) && existsSync(received), { timeoutMs: 5000, what: 'the notify receiver' });
});
after(() => {
  receiver?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

const messages = (): string[] => (existsSync(received) ? readFileSync(received, 'utf8').split('\n').filter((l) => l !== '') : []);

class Source implements TopologySource {
  readonly kind = 'etcd' as const;
  view: Topology = topo([CN(), WK1()]);
  async start(): Promise<void> {}
  snapshot(): Topology {
    return this.view;
  }
  onChange(): void {}
  async refresh(): Promise<Topology> {
    return this.view;
  }
  async stop(): Promise<void> {}
  describe(): string {
    return 'fake etcd';
  }
  patroniCitusLayout(): string | null {
    return null;
  }
}

describe('systemd notifications', () => {
  test('READY, watchdog pings while healthy, none while a pass hangs, STOPPING', async () => {
    const source = new Source();
    let hang: Promise<void> | null = null;
    let release = () => undefined as void;
    const controller: PassRunner = {
      source,
      start: async () => undefined,
      pass: async () => {
        if (hang) await hang;
        return { topology: source.view, sourceDescription: 'fake', rows: new Map(), readErrors: [], plan: { actions: [], findings: [] } } as PassOutcome;
      },
      checkWriter: async () => ({ writer: true }),
      close: async () => undefined,
    };
    const { log, lines } = captureLog();
    const daemon = new Daemon(testConfig(), {
      log,
      controller,
      keeper: { offer: () => undefined, stop: async () => undefined },
      socketPath: join(dir, 'nudge.sock'),
      env: { ...process.env, NOTIFY_SOCKET: sock, WATCHDOG_USEC: '200000' },
      passDeadlineMs: 300,
    });
    const running = daemon.run();
    await waitFor(() => messages().filter((m) => m === 'WATCHDOG=1').length >= 3, { timeoutMs: 5000, what: () => `3 pings; got ${messages().join(' / ')}` });
    assert.match(messages()[0] ?? '', /^READY=1\|STATUS=watching fake etcd$/);

    // a pass that hangs: pings stop once it has run longer than the deadline
    hang = new Promise<void>((r) => (release = r));
    void daemon.trigger({ kind: 'nudge', detail: 'test' });
    await new Promise((r) => setTimeout(r, 400)); // past the 300 ms deadline
    const before = messages().length;
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(messages().length, before, `no ping while the pass hangs: ${messages().slice(before).join(' / ')}`);
    assert.ok(lines.some((l) => /systemd watchdog: not pinging, a pass has been running for too long/.test(l.msg)), 'said once why');
    release();
    hang = null;
    await waitFor(() => messages().length > before, { timeoutMs: 3000, what: 'pings again once the pass ended' });
    await daemon.stop('SIGTERM');
    await running;
    await waitFor(() => messages().some((m) => m === 'STOPPING=1|STATUS=stopping (SIGTERM)'), { timeoutMs: 3000, what: () => `STOPPING; got ${messages().join(' / ')}` });
  });

  test('watchdog interval: half of WATCHDOG_USEC, only for this pid; health: a pass within its deadline', () => {
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '30000000' }, 42), 15000);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42), 15000);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 42), null);
    assert.equal(watchdogIntervalMs({}, 42), null);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: 'x' }, 42), null);
    assert.equal(watchdogHealthy(1000, null, 100), true);
    assert.equal(watchdogHealthy(1000, 950, 100), true);
    assert.equal(watchdogHealthy(1000, 899, 100), false);
  });
});
