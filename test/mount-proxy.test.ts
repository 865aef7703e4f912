// Through an HTTP proxy, as a company network reaches O3: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from
// the environment, decided once for both of the mount's paths (the SDK's for metadata, the native
// engine's for bytes). A real forward proxy on loopback counts what went through it; the HTTPS case
// has a TLS terminator with a private CA behind it, so the server's certificate is still checked
// end to end through the tunnel.
import { createHash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { startForwardProxy } from './support/forward-proxy.js'
import { startTlsProxy } from './support/tls-proxy.js'
import { mount, runCli, statsWhen, tempMountpoint } from './support/o3mount.js'

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-proxy-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())
const body = randomBytes((3 << 20) + 17)
await client.put('via/data.bin', body)
/** No proxy setting of this machine's own leaks in: each case sets what it means. */
const noProxyEnv = {
  HTTPS_PROXY: undefined,
  https_proxy: undefined,
  HTTP_PROXY: undefined,
  http_proxy: undefined,
  ALL_PROXY: undefined,
  all_proxy: undefined,
  NO_PROXY: undefined,
  no_proxy: undefined,
}

t.test('HTTPS through the proxy: CONNECT tunnels for both paths, the private CA still checked', async (t) => {
  const tls = await startTlsProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => tls.close())
  const proxy = await startForwardProxy()
  t.teardown(() => proxy.close())
  const m = await mount(t, info, BUCKET, { env: { ...noProxyEnv, O3_ENDPOINT: tls.endpoint, O3_CA_BUNDLE: tls.caFile, HTTPS_PROXY: proxy.url } })
  t.match(m.log(), new RegExp(`"proxy":"${proxy.url}"`), 'the start-up line names the proxy')
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'via/data.bin'))), sha256(body), 'exact bytes')
  const s = await statsWhen(m, (x) => x.fetch.bytesFetched >= body.length)
  t.equal(s.fetch.bytesFetched, body.length, 'every byte through the native engine')
  t.ok(proxy.tunnels >= 2, `tunnels for the SDK and the native engine (${proxy.tunnels})`)
  t.ok(proxy.bytesDown > body.length, `the bytes came through the proxy (${proxy.bytesDown})`)
  // The tunnel does not stand in for the server's certificate: trusting another CA fails.
  const r = await runCli(info, [tempMountpoint(t), BUCKET], { ...noProxyEnv, O3_ENDPOINT: tls.endpoint, O3_CA_BUNDLE: tls.otherCaFile, HTTPS_PROXY: proxy.url })
  t.equal(r.code, ExitCode.unreachable, r.stderr)
  t.match(r.stderr, /not trusted/)
})

t.test('HTTP through the proxy: absolute-URI requests; its password is never logged', async (t) => {
  const proxy = await startForwardProxy()
  t.teardown(() => proxy.close())
  const withPassword = proxy.url.replace('http://', 'http://someone:pr0xy-s3cret@')
  const m = await mount(t, info, BUCKET, { env: { ...noProxyEnv, HTTP_PROXY: withPassword } })
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'via/data.bin'))), sha256(body), 'exact bytes')
  t.ok(proxy.requests >= 2, `requests of both paths went through it (${proxy.requests})`)
  t.ok(proxy.bytesDown > body.length, `the bytes came through the proxy (${proxy.bytesDown})`)
  t.match(m.log(), new RegExp(`"proxy":"${proxy.url}"`), 'the start-up line names the proxy without its user and password')
  t.notMatch(m.log(), /pr0xy-s3cret/)
})

t.test('NO_PROXY names the endpoint: both paths go direct', async (t) => {
  const proxy = await startForwardProxy()
  t.teardown(() => proxy.close())
  const m = await mount(t, info, BUCKET, { env: { ...noProxyEnv, HTTP_PROXY: proxy.url, NO_PROXY: 'example.com,127.0.0.1' } })
  t.equal(sha256(await readFile(path.join(m.mountpoint, 'via/data.bin'))), sha256(body), 'exact bytes')
  t.equal(proxy.requests + proxy.tunnels, 0, 'nothing went through the proxy')
  t.match(m.log(), /"proxy":"none"/)
})

t.test('a proxy that is not http:// is one line and the configuration exit status', async (t) => {
  const r = await runCli(info, [tempMountpoint(t), BUCKET], { ...noProxyEnv, HTTP_PROXY: 'socks5://127.0.0.1:1080' })
  t.equal(r.code, ExitCode.config, r.stderr)
  t.equal(r.stderr.trim().split('\n').length, 1, r.stderr)
  t.match(r.stderr, /proxy .*must be http:\/\/host:port; add the endpoint's host to NO_PROXY/)
})
