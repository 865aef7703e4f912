// HTTPS in front of a plain-HTTP server on loopback, the way every real O3 user connects: stunnel4
// terminating TLS with a server certificate (subjectAltName IP:127.0.0.1) from a private CA made
// here with `openssl req -x509`. Tests and benches point clients at `endpoint` and give them
// `caFile` (--ca-bundle, O3_CA_BUNDLE, CURL_CA_BUNDLE for s3fs). The machine's own CA variables
// are not touched: callers set the ones they mean.
//
// stunnel runs in the foreground under a small watchdog that stops it once this process is gone
// (however it died); close() and this process's exit stop it by PID, and its temp directory (keys
// included) is removed.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { promisify } from 'node:util'
import { freePort } from './free-port.js'

const execFileP = promisify(execFile)

export interface TlsProxy {
  /** https://127.0.0.1:PORT */
  endpoint: string
  port: number
  /** The private CA's certificate (PEM): what clients must trust. */
  caFile: string
  /** A second CA's certificate that signed nothing here: trusting it alone must fail. */
  otherCaFile: string
  close(): Promise<void>
}

const running = new Set<ChildProcess>()
let exitHook = false

function stopAllSync(): void {
  for (const child of running) child.kill('SIGTERM')
  running.clear()
}

async function openssl(args: string[], cwd: string): Promise<void> {
  await execFileP('openssl', args, { cwd, timeout: 60_000 })
}

/** A CA (ca.pem) and a server certificate for 127.0.0.1 it signed (server.pem, server.key), in `dir`. */
async function makeCertificates(dir: string): Promise<void> {
  const ca = (name: string, cn: string) =>
    openssl(
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-days',
        '2',
        '-subj',
        `/CN=${cn}`,
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.pem`,
        '-addext',
        'basicConstraints=critical,CA:TRUE',
        '-addext',
        'keyUsage=critical,keyCertSign,cRLSign',
      ],
      dir,
    )
  await ca('ca', 'o3mount test CA')
  await ca('other-ca', 'o3mount unrelated CA')
  await openssl(
    ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr'],
    dir,
  )
  writeFileSync(
    path.join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n',
  )
  await openssl(
    ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'server.ext', '-out', 'server.pem'],
    dir,
  )
}

/** Resolves once a TLS handshake with `port`, trusting `ca`, succeeds; rejects after `timeoutMs`. */
async function waitForTls(port: number, ca: Buffer, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`stunnel exited (${child.exitCode ?? child.signalCode})`)
    const ok = await new Promise<boolean>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca }, () => {
        s.destroy()
        resolve(true)
      })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`stunnel did not answer on port ${port} within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

/** Starts stunnel on a free loopback port, forwarding to 127.0.0.1:targetPort. */
export async function startTlsProxy(opts: { targetPort: number }): Promise<TlsProxy> {
  const dir = mkdtempSync(path.join(tmpdir(), 'o3-tls-'))
  try {
    await makeCertificates(dir)
    const ca = readFileSync(path.join(dir, 'ca.pem'))
    let lastError: unknown
    // A port found free can be taken before stunnel binds it: try another.
    for (let attempt = 0; attempt < 3; attempt++) {
      const port = await freePort()
      const conf = path.join(dir, 'stunnel.conf')
      writeFileSync(
        conf,
        [
          'foreground = yes',
          'pid =',
          `output = ${path.join(dir, 'stunnel.log')}`,
          'debug = notice',
          '[s3]',
          `accept = 127.0.0.1:${port}`,
          `connect = 127.0.0.1:${opts.targetPort}`,
          `cert = ${path.join(dir, 'server.pem')}`,
          `key = ${path.join(dir, 'server.key')}`,
          '',
        ].join('\n'),
      )
      // The watchdog: stunnel in the background, stopped when this process or the watchdog ends.
      const watchdog =
        'stunnel4 "$1" & s=$!; trap \'kill $s; wait $s; exit 0\' TERM; while kill -0 "$2" 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 0.5; done; kill $s 2>/dev/null; wait $s'
      const child = spawn('bash', ['-c', watchdog, 'tls-proxy', conf, String(process.pid)], { stdio: 'ignore' })
      running.add(child)
      child.on('exit', () => running.delete(child))
      if (!exitHook) {
        exitHook = true
        process.on('exit', stopAllSync)
      }
      try {
        await waitForTls(port, ca, child, 20_000)
      } catch (err) {
        lastError = err
        child.kill('SIGTERM')
        continue
      }
      let closing: Promise<void> | undefined
      return {
        endpoint: `https://127.0.0.1:${port}`,
        port,
        caFile: path.join(dir, 'ca.pem'),
        otherCaFile: path.join(dir, 'other-ca.pem'),
        close: () =>
          (closing ??= new Promise<void>((resolve) => {
            const done = () => {
              rmSync(dir, { recursive: true, force: true })
              resolve()
            }
            if (child.exitCode !== null || child.signalCode !== null) return done()
            child.once('exit', done)
            child.kill('SIGTERM')
          })),
      }
    }
    throw new Error(`could not start stunnel4: ${(lastError as Error)?.message ?? lastError}`)
  } catch (err) {
    rmSync(dir, { recursive: true, force: true })
    throw err
  }
}
