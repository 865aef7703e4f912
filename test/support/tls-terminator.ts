/**
 * HTTPS in front of the loopback S3 server, as every real O3 user connects: stunnel4 (Debian)
 * terminating TLS with a server certificate for 127.0.0.1 signed by a private CA made here.
 * Clients trust it only through the CA file (`--ca-bundle`, `O3_CA_BUNDLE`, `CURL_CA_BUNDLE`,
 * rclone's `--ca-cert`), never through the system store. Stopped by PID.
 */
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort } from './free-port.js'

export interface TlsTerminator {
  /** `https://127.0.0.1:<port>` */
  endpoint: string
  /** PEM of the CA that signed the server certificate. */
  caFile: string
  stop(): Promise<void>
}

const STARTUP_MS = 15_000

/** A CA and a server certificate for IP 127.0.0.1 in `dir`; returns the paths. */
function makeCertificates(dir: string): { ca: string; cert: string; key: string } {
  const f = (name: string) => path.join(dir, name)
  const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' })
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=o3mount test CA', '-keyout', f('ca.key'), '-out', f('ca.pem'))
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', f('server.key'), '-out', f('server.csr'))
  writeFileSync(
    f('san.ext'),
    'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n',
  )
  openssl(
    'x509',
    '-req',
    '-in',
    f('server.csr'),
    '-CA',
    f('ca.pem'),
    '-CAkey',
    f('ca.key'),
    '-CAcreateserial',
    '-days',
    '2',
    '-extfile',
    f('san.ext'),
    '-out',
    f('server.pem'),
  )
  return { ca: f('ca.pem'), cert: f('server.pem'), key: f('server.key') }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1')
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/** Starts stunnel on a free loopback port, forwarding to `target` (a plain-HTTP endpoint on loopback). */
export async function startTlsTerminator(target: URL, parentDir?: string): Promise<TlsTerminator> {
  const dir = mkdtempSync(path.join(parentDir ?? '/tmp', 'o3-tls-'))
  const { ca, cert, key } = makeCertificates(dir)
  const port = await freePort()
  const conf = path.join(dir, 'stunnel.conf')
  writeFileSync(
    conf,
    [
      'foreground = yes',
      'syslog = no',
      'debug = 3',
      `output = ${path.join(dir, 'stunnel.log')}`,
      '[s3]',
      `accept = 127.0.0.1:${port}`,
      `connect = ${target.hostname}:${target.port}`,
      `cert = ${cert}`,
      `key = ${key}`,
      '',
    ].join('\n'),
  )
  const child = spawn('stunnel4', [conf], { stdio: 'ignore' })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await exited
    }
    rmSync(dir, { recursive: true, force: true })
  }
  for (const end = Date.now() + STARTUP_MS; !(await accepts(port)); await sleep(50)) {
    if (child.exitCode !== null || Date.now() > end) {
      await stop()
      throw new Error(`stunnel4 did not start listening on 127.0.0.1:${port} (apt-get install stunnel4; scripts/setup does)`)
    }
  }
  return { endpoint: `https://127.0.0.1:${port}`, caFile: ca, stop }
}
