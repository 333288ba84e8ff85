/**
 * One long-lived `ip -force -batch -` for the processes that bind and release VIPs all day (the
 * VIP helper, an agent that acts itself): a command costs one write and one read (~1-2 ms)
 * instead of a process start (8-12 ms idle, 20-70 ms on a loaded 2-core node), which is most of
 * the time a read/write VIP move takes.
 *
 * Protocol: stderr is merged into stdout (`2>&1`, so the order of the two is the order ip wrote
 * them), and after each command comes a sentinel, `link show dev <name longer than IFNAMSIZ>`,
 * which can never name a device: its "Device ... does not exist." line ends the command's
 * output. `-force` keeps ip going after a failed command; a failure shows as
 * "Command failed -:<line>" for the command's own line. `-s -s` is global, so `addr flush` says
 * what it removed, exactly as a one-shot `ip -s -s addr flush` does.
 *
 * A command that does not finish within its limit kills the process (its state is unknown); the
 * next command starts a new one. Only arguments without blanks or quotes go through here (the
 * config allows no others in an interface name); anything else is refused, never re-quoted.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

export interface BatchResult {
  failed: boolean;
  timedOut: boolean;
  /** The command's output, stdout and stderr in the order ip wrote them. */
  output: string;
  /** Set when ip could not be started (ENOENT, EACCES, ...). */
  code?: string;
}

interface Pending {
  line: number;
  sentinel: string;
  resolve: (r: BatchResult) => void;
  timer: NodeJS.Timeout;
}

const PLAIN = /^[^\s"'\\#]+$/;

export class IpBatch {
  private child: ChildProcessWithoutNullStreams | null = null;
  private buf = '';
  /** Lines written to the current process (ip numbers them from 1). */
  private lines = 0;
  private seq = 0;
  private readonly queue: Pending[] = [];
  private closed = false;

  constructor(private readonly bin: string) {}

  /** Runs one `ip` command (argv without the binary), like a one-shot run with `-s -s -o`. */
  run(args: readonly string[], timeoutMs: number): Promise<BatchResult> {
    if (this.closed) return Promise.resolve({ failed: true, timedOut: false, output: 'ip batch: closed' });
    const bad = args.find((a) => !PLAIN.test(a));
    if (bad !== undefined) return Promise.resolve({ failed: true, timedOut: false, output: `ip batch: refused argument ${JSON.stringify(bad)}` });
    const child = this.start();
    if ('code' in child) return Promise.resolve({ failed: true, timedOut: false, output: child.message, code: child.code });
    const sentinel = `cc-end-of-request-${++this.seq}`;
    const line = this.lines + 1;
    this.lines += 2;
    return new Promise<BatchResult>((resolve) => {
      const pending: Pending = {
        line,
        sentinel,
        resolve,
        timer: setTimeout(() => {
          this.queue.splice(this.queue.indexOf(pending), 1);
          this.kill();
          resolve({ failed: true, timedOut: true, output: '' });
        }, timeoutMs),
      };
      this.queue.push(pending);
      child.ref();
      child.stdin.write(`${args.join(' ')}\nlink show dev ${sentinel}\n`);
    });
  }

  private start(): ChildProcessWithoutNullStreams | { code: string; message: string } {
    if (this.child) return this.child;
    let child: ChildProcessWithoutNullStreams;
    try {
      child = spawn('/bin/sh', ['-c', 'exec "$0" "$@" 2>&1', this.bin, '-s', '-s', '-o', '-force', '-batch', '-'], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { LC_ALL: 'C', LANG: 'C', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      return { code: e.code ?? 'ESPAWN', message: e.message };
    }
    this.child = child;
    this.buf = '';
    this.lines = 0;
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => this.onData(chunk));
    child.stderr.resume();
    child.stdin.on('error', () => undefined);
    child.on('error', () => undefined);
    child.on('exit', (exitCode) => {
      if (this.child !== child) return;
      this.child = null;
      // `exec` of a missing binary: sh says so and exits 127 (126: not executable)
      const why = this.buf.trim() !== '' ? this.buf.trim().split('\n')[0]! : `ip exited (${String(exitCode)})`;
      this.failAll(why, exitCode === 127 ? 'ENOENT' : exitCode === 126 ? 'EACCES' : undefined);
    });
    // a process that idles keeps nobody alive: referenced only while a command runs
    this.unrefAll(child);
    return child;
  }

  private unrefAll(child: ChildProcessWithoutNullStreams): void {
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr] as unknown as { unref?: () => void }[]) s.unref?.();
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    for (;;) {
      const p = this.queue[0];
      if (!p) return;
      const at = this.buf.indexOf(`Device "${p.sentinel}" does not exist.`);
      if (at < 0) return;
      // the sentinel's own "Command failed -:<line+1>" follows its message
      const tail = `Command failed -:${p.line + 1}\n`;
      const end = this.buf.indexOf(tail, at);
      if (end < 0) return;
      const output = this.buf.slice(0, at);
      this.buf = this.buf.slice(end + tail.length);
      this.queue.shift();
      clearTimeout(p.timer);
      const mark = `Command failed -:${p.line}\n`;
      p.resolve({ failed: output.includes(mark), timedOut: false, output: output.replace(mark, '') });
      if (this.queue.length === 0 && this.child) this.unrefAll(this.child);
    }
  }

  private failAll(why: string, code?: string): void {
    for (const p of this.queue.splice(0)) {
      clearTimeout(p.timer);
      p.resolve({ failed: true, timedOut: false, output: why, ...(code !== undefined ? { code } : {}) });
    }
  }

  private kill(): void {
    const child = this.child;
    this.child = null;
    this.failAll('ip batch: restarted after a command ran out of time');
    child?.kill('SIGKILL');
  }

  close(): void {
    this.closed = true;
    const child = this.child;
    this.child = null;
    this.failAll('ip batch: closed');
    child?.stdin.end();
  }
}
