/**
 * Network addresses: parse, format and compare `host:port` values and IP addresses. Pure.
 *
 * Hosts are kept as exact text: pg_dist_node compares `(nodename, nodeport)` as text, so
 * `127.0.0.1` and `localhost` are different rows and nothing here lower-cases or resolves a name.
 */

export interface HostPort {
  host: string;
  port: number;
}

const HOSTNAME = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

const IPV4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** A dotted-quad IPv4 address (four decimal parts, each 0-255, no leading zeros). */
export function isIPv4(text: string): boolean {
  return IPV4.test(text);
}

/**
 * The WHATWG URL parser's IPv6 form of `text` (compressed, lower case), or null when `text` is not
 * an IPv6 address (brackets, zone ids and anything else refused). Built in, no I/O: the callback's
 * start-up pays for no address library.
 */
function ipv6Canonical(text: string): string | null {
  if (!text.includes(':') || !/^[0-9A-Fa-f:.]+$/.test(text)) return null;
  try {
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
}

/** An IPv6 address without brackets and without a zone id. */
export function isIPv6(text: string): boolean {
  return ipv6Canonical(text) !== null;
}

/** An IPv4 or IPv6 address (no host names). */
export function isIpAddress(text: string): boolean {
  return isIPv4(text) || isIPv6(text);
}

/** True for a DNS name, an IPv4 address or an IPv6 address (without brackets). */
export function isValidHost(host: string): boolean {
  if (isIPv4(host)) return true;
  if (host.includes(':')) return isIPv6(host);
  // a name made of digits and dots only is a malformed IPv4 address, not a DNS name
  if (/^[\d.]+$/.test(host)) return false;
  return host.length <= 253 && HOSTNAME.test(host);
}

/** A TCP port: a whole number 1-65535. */
export function isValidPort(port: unknown): port is number {
  return typeof port === 'number' && Number.isInteger(port) && port >= 1 && port <= 65535;
}

/** Parses `host:port` / `[v6]:port`. Returns an error text instead of throwing. */
export function parseHostPort(value: string, defaultPort?: number): HostPort | string {
  const text = value.trim();
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (v6) {
    host = v6[1] ?? '';
    portText = v6[2];
  } else {
    const i = text.lastIndexOf(':');
    if (i >= 0 && text.indexOf(':') === i) {
      host = text.slice(0, i);
      portText = text.slice(i + 1);
    } else if (i < 0) {
      host = text;
    } else {
      return `${JSON.stringify(value)} is not host:port (write IPv6 as [addr]:port)`;
    }
  }
  if (!isValidHost(host)) return `${JSON.stringify(value)} has an invalid host name`;
  let port = defaultPort;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText)) return `${JSON.stringify(value)} has an invalid port`;
    port = Number(portText);
  }
  if (port === undefined) return `${JSON.stringify(value)} is not host:port (the port is missing)`;
  if (port < 1 || port > 65535) return `${JSON.stringify(value)}: port must be 1-65535`;
  return { host, port };
}

/** `host:port`, IPv6 in brackets. */
export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** Same host text and port (the comparison pg_dist_node makes). */
export function sameHostPort(a: HostPort | null | undefined, b: HostPort | null | undefined): boolean {
  return a !== null && a !== undefined && b !== null && b !== undefined && a.host === b.host && a.port === b.port;
}

/** The list without repeated `host:port` entries, first occurrence kept. */
export function dedupeHostPorts(list: readonly HostPort[]): HostPort[] {
  const seen = new Set<string>();
  return list.filter((hp) => {
    const k = formatHostPort(hp);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** Canonical text of an IP address (IPv6 compressed, lower case) for exact comparisons. */
export function canonicalAddress(address: string): string {
  return ipv6Canonical(address) ?? address;
}

/**
 * Host and port of a Patroni `conn_url` (`postgres://host:port/db`, also `postgresql://`, with or
 * without `user:password@`, `[v6]` brackets, query string). Missing port -> 5432. Returns null for
 * anything else, including host names that are not a DNS name / IPv4 / IPv6 address (quotes,
 * spaces, SQL text, percent escapes, several hosts). Never throws. The host is kept as exact text.
 */
export function parseConnUrl(connUrl: unknown): HostPort | null {
  if (typeof connUrl !== 'string') return null;
  const text = connUrl.trim();
  const scheme = /^postgres(?:ql)?:\/\//i.exec(text);
  if (!scheme) return null;
  const rest = text.slice(scheme[0].length);
  const end = rest.search(/[/?#]/);
  let authority = end < 0 ? rest : rest.slice(0, end);
  const at = authority.lastIndexOf('@');
  if (at >= 0) authority = authority.slice(at + 1);
  let host: string;
  let portText: string | undefined;
  if (authority.startsWith('[')) {
    const m = /^\[([^\]]+)\](?::(\d*))?$/.exec(authority);
    if (!m) return null;
    host = m[1] ?? '';
    portText = m[2];
    if (!host.includes(':')) return null;
  } else {
    const parts = authority.split(':');
    if (parts.length > 2) return null; // unbracketed IPv6 or garbage
    host = parts[0] ?? '';
    portText = parts[1];
  }
  if (host === '' || !isValidHost(host)) return null;
  let port = 5432;
  if (portText !== undefined && portText !== '') {
    if (!/^\d{1,5}$/.test(portText)) return null;
    port = Number(portText);
  }
  if (!isValidPort(port)) return null;
  return { host, port };
}
