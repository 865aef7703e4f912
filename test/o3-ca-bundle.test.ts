// The CA bundle setting on the TypeScript (SDK) path, over HTTPS: stunnel with a private CA in
// front of the real Swift server (test/support/tls-proxy.ts). The client trusts the CA given by
// --ca-bundle or O3_CA_BUNDLE (else AWS_CA_BUNDLE, else the system store, which does not know
// it); a command given a bad bundle says so on one line and exits with the configuration status.
// The machine's own CA variables are removed from every environment here.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { O3Client, O3UntrustedServerError, resolveConfig } from '../lib/o3/index.js'
import { cliCommand } from '../lib/paths.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { startTlsProxy } from './support/tls-proxy.js'

const BUCKET = `ca-bundle-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const tlsProxy = await startTlsProxy({ targetPort: Number(new URL(info.endpoint).port) })
t.teardown(() => tlsProxy.close())
const dir = mkdtempSync(path.join(tmpdir(), 'o3-ca-bundle-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

/** The server's keys and the HTTPS endpoint, without any CA variable of the machine's. */
function env(extra: Record<string, string> = {}): Record<string, string> {
  return { ...serverEnv({ ...info, endpoint: tlsProxy.endpoint }), ...extra }
}

function client(flags: { caBundle?: string }, e: Record<string, string>): O3Client {
  const c = O3Client.open(BUCKET, { config: resolveConfig({ endpoint: tlsProxy.endpoint, region: info.region, ...flags }, e), retry: { baseDelayMs: 10 } })
  t.teardown(() => c.close())
  return c
}

t.test('--ca-bundle and O3_CA_BUNDLE: the SDK client trusts the private CA', async (t) => {
  const body = randomBytes(300_000)
  const viaFlag = client({ caBundle: tlsProxy.caFile }, env())
  t.equal(viaFlag.config.sources.caBundle, '--ca-bundle')
  await viaFlag.put('tls/a.bin', body)
  t.equal((await viaFlag.head('tls/a.bin')).size, body.length)
  t.ok((await viaFlag.getBytes('tls/a.bin', 0, body.length - 1)).equals(body), 'byte-exact over HTTPS')

  const viaEnv = client({}, env({ O3_CA_BUNDLE: tlsProxy.caFile, AWS_CA_BUNDLE: tlsProxy.otherCaFile }))
  t.equal(viaEnv.config.sources.caBundle, 'O3_CA_BUNDLE', 'before AWS_CA_BUNDLE')
  t.ok((await viaEnv.getBytes('tls/a.bin', 1000, 1999)).equals(body.subarray(1000, 2000)))

  const viaAws = client({}, env({ AWS_CA_BUNDLE: tlsProxy.caFile }))
  t.equal(viaAws.config.sources.caBundle, 'AWS_CA_BUNDLE')
  t.equal((await viaAws.head('tls/a.bin')).size, body.length)
})

t.test('the system store or another CA: Unreachable at once, naming the setting', async (t) => {
  for (const [name, flags] of [
    ['system store', {}],
    ['another CA', { caBundle: tlsProxy.otherCaFile }],
  ] as const) {
    const c = client(flags, env())
    const started = Date.now()
    await t.rejects(c.head('tls/a.bin'), { constructor: O3UntrustedServerError, message: /certificate is not trusted .*--ca-bundle or O3_CA_BUNDLE/ }, name)
    t.equal(c.stats.retries, 0, `${name}: not retried`)
    t.ok(Date.now() - started < 5000)
  }
})

function cli(args: string[], e: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { file, execArgv } = cliCommand('checkpoint/cli.ts')
  const child = spawn(process.execPath, [...execArgv, file, ...args], { env: { PATH: process.env.PATH!, HOME: process.env.HOME!, ...e } })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => (stdout += d))
  child.stderr.on('data', (d) => (stderr += d))
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })))
}

t.test('o3ckpt over HTTPS with --ca-bundle; a bad bundle is one line and exit 78', async (t) => {
  const run = `o3://${BUCKET}/runs/none`
  const ok = await cli(['ls', run, '--ca-bundle', tlsProxy.caFile, '--json'], env())
  t.equal(ok.code, 0, ok.stderr)
  const untrusted = await cli(['ls', run], env())
  t.equal(untrusted.code, ExitCode.unreachable, untrusted.stderr)
  t.match(untrusted.stderr, /certificate is not trusted/)

  const notPem = path.join(dir, 'not.pem')
  writeFileSync(notPem, 'hello\n')
  for (const [args, e, pattern] of [
    [['--ca-bundle', path.join(dir, 'missing.pem')], env(), /cannot read CA bundle \(from --ca-bundle\) .*missing\.pem: ENOENT/],
    [[], env({ O3_CA_BUNDLE: notPem }), /CA bundle \(from O3_CA_BUNDLE\) .*not\.pem holds no PEM certificate/],
  ] as const) {
    const bad = await cli(['ls', run, ...args], e)
    t.equal(bad.code, ExitCode.config, bad.stderr)
    t.match(bad.stderr, pattern)
    t.equal(bad.stderr.trim().split('\n').length, 1, 'one line')
  }
})
