import t from 'tap'
import http from 'node:http'
import net from 'node:net'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { startFaultProxy, type FaultProxy, type FaultProxyOptions } from './support/fault-proxy.js'
import { until } from './support/until.js'

const BIG = randomBytes(20 * 1024 * 1024)
const PART = 64 * 1024

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

// Routes: /bytes/N sends the first N bytes of BIG; /twopart sends two halves 150 ms
// apart; /hang sends one byte and never finishes.
const server = http.createServer((req, res) => {
  const url = req.url ?? '/'
  if (url.startsWith('/bytes/')) {
    const body = BIG.subarray(0, Number(url.slice('/bytes/'.length)))
    res.writeHead(200, { 'content-length': body.length })
    res.end(body)
  } else if (url === '/twopart') {
    res.writeHead(200, { 'content-length': 2 * PART })
    res.write(BIG.subarray(0, PART))
    setTimeout(() => res.end(BIG.subarray(PART, 2 * PART)), 150)
  } else if (url === '/hang') {
    res.writeHead(200)
    res.write('x')
  } else {
    res.writeHead(404).end()
  }
})
server.listen(0, '127.0.0.1')
await once(server, 'listening')
const targetPort = (server.address() as net.AddressInfo).port
t.teardown(() => {
  server.closeAllConnections()
  server.close()
})

async function proxyFor(tt: { teardown(fn: () => unknown): void }, opts: Omit<FaultProxyOptions, 'targetPort'> = {}): Promise<FaultProxy> {
  const proxy = await startFaultProxy({ targetPort, ...opts })
  tt.teardown(() => proxy.close())
  return proxy
}

interface Fetched {
  status?: number
  body: Buffer
  error?: Error
  ms: number
}

/** One GET, on a fresh connection unless an agent is given; resolves (never rejects) with whatever arrived and any error. */
function get(url: string, onFirstData?: (res: http.IncomingMessage) => void, agent: http.Agent | false = false): Promise<Fetched> {
  const start = performance.now()
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    const done = (error?: Error, status?: number): void => resolve({ status, body: Buffer.concat(chunks), error, ms: performance.now() - start })
    const req = http.get(url, { agent }, (res) => {
      res.on('data', (chunk: Buffer) => {
        if (chunks.length === 0) onFirstData?.(res)
        chunks.push(chunk)
      })
      res.on('error', () => {})
      res.on('close', () => done(res.complete ? undefined : new Error('response cut short'), res.statusCode))
    })
    req.on('error', (error) => done(error))
  })
}

t.test('passes a large body through byte-exact and counts it', async (t) => {
  const proxy = await proxyFor(t)
  const r = await get(`${proxy.endpoint}/bytes/${BIG.length}`)
  t.error(r.error)
  t.equal(r.status, 200)
  t.equal(r.body.length, BIG.length)
  t.equal(sha256(r.body), sha256(BIG))
  t.ok(proxy.bytesToClient > BIG.length, 'body and headers counted')
  t.ok(proxy.bytesToServer > 0)
  t.equal(proxy.connections, 1)
  await until(() => proxy.active === 0, 'connection to close')
  t.equal(proxy.resets, 0)
})

t.test('latency delays both directions', async (t) => {
  const proxy = await proxyFor(t)
  // Long enough that a loaded machine's own delays cannot pass for it.
  const latency = 1000
  proxy.setLatency(latency)
  const r = await get(`${proxy.endpoint}/bytes/1000`)
  t.error(r.error)
  t.ok(r.ms >= 2 * latency - 10, `request and response each delayed ${latency} ms: ${r.ms.toFixed(0)} ms`)
  proxy.clear()
  const fast = await get(`${proxy.endpoint}/bytes/1000`)
  // Still delayed, it would take 2 x latency; one latency is the margin left for a busy machine.
  t.ok(fast.ms < latency, `no delay after clear: ${fast.ms.toFixed(0)} ms`)
})

t.test('bandwidth cap bounds throughput', async (t) => {
  const proxy = await proxyFor(t)
  const size = 200_000
  const cap = 100_000
  proxy.setBandwidth(cap)
  const r = await get(`${proxy.endpoint}/bytes/${size}`)
  t.error(r.error)
  t.equal(sha256(r.body), sha256(BIG.subarray(0, size)))
  // 2 s at the cap, less the first slice (1/20 s of it) that goes at once, less 10 ms of timer rounding.
  const capped = ((size - cap / 20) / cap) * 1000 - 10
  t.ok(r.ms >= capped, `200 kB at 100 kB/s took ${r.ms.toFixed(0)} ms (at least ${capped} ms)`)
  proxy.setBandwidth(null)
  const free = await get(`${proxy.endpoint}/bytes/${size}`)
  t.ok(free.ms < capped, `uncapped took ${free.ms.toFixed(0)} ms`)
  t.throws(() => proxy.setBandwidth(0))
})

t.test('outage resets open and new connections, then recovers', async (t) => {
  const proxy = await proxyFor(t)
  let firstData!: () => void
  const streaming = new Promise<void>((resolve) => (firstData = resolve))
  const hanging = get(`${proxy.endpoint}/hang`, () => firstData())
  await streaming

  const started = performance.now()
  const over = proxy.outage(500)
  const cut = await hanging
  t.ok(cut.error, `open connection cut: ${cut.error?.message}`)
  const during = await get(`${proxy.endpoint}/bytes/10`)
  t.match(during.error, { code: 'ECONNRESET' }, 'new connection reset during outage')
  t.equal(proxy.resets, 2)

  await over
  t.ok(performance.now() - started >= 490, 'outage promise resolves after the outage')
  const after = await get(`${proxy.endpoint}/bytes/10`)
  t.error(after.error)
  t.equal(after.status, 200)
})

t.test('resetAfterBytes cuts only as many connections as asked, after n bytes', async (t) => {
  const proxy = await proxyFor(t)
  const n = 100_000
  const size = 1_000_000
  proxy.resetAfterBytes(n, { count: 2 })
  for (const i of [1, 2]) {
    const r = await get(`${proxy.endpoint}/bytes/${size}`)
    t.ok(r.error, `connection ${i} cut: ${r.error?.message}`)
    // n counts the response headers too, so the body stops a little short of n.
    t.ok(r.body.length > n - 1024 && r.body.length < n, `connection ${i} got ${r.body.length} body bytes`)
    t.ok(r.body.equals(BIG.subarray(0, r.body.length)), 'what arrived is a prefix of the body')
  }
  t.equal(proxy.resets, 2)
  t.equal(proxy.bytesToClient, 2 * n, 'exactly n bytes forwarded on each cut connection')
  const whole = await get(`${proxy.endpoint}/bytes/${size}`)
  t.error(whole.error, 'third connection untouched')
  t.equal(sha256(whole.body), sha256(BIG.subarray(0, size)))
  t.equal(proxy.resets, 2)
})

t.test('resetAfterBytes reaches an idle keep-alive connection and counts bytes across its responses', async (t) => {
  const proxy = await proxyFor(t)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  t.error((await get(`${proxy.endpoint}/bytes/10`, undefined, agent)).error, 'warm-up, before the fault')
  proxy.resetAfterBytes(100_000)
  t.error((await get(`${proxy.endpoint}/bytes/10`, undefined, agent)).error, 'short response under the budget')
  const cut = await get(`${proxy.endpoint}/bytes/1000000`, undefined, agent)
  t.ok(cut.error, 'large response cut')
  t.equal(proxy.connections, 1, 'all on one pooled connection')
  t.equal(proxy.resets, 1)
})

t.test('stall holds data on an open connection and then delivers all of it', async (t) => {
  const proxy = await proxyFor(t)
  let stalledAt = 0
  const r = await get(`${proxy.endpoint}/twopart`, () => {
    stalledAt = performance.now()
    proxy.stall(400)
  })
  const held = performance.now() - stalledAt
  t.error(r.error)
  t.ok(held >= 390, `second half held until the stall ended: ${held.toFixed(0)} ms`)
  t.equal(sha256(r.body), sha256(BIG.subarray(0, 2 * PART)))
})

t.test('a slow reader gets backpressure, not unbounded buffering', async (t) => {
  const maxBufferedBytes = 64 * 1024
  const proxy = await proxyFor(t, { maxBufferedBytes })
  let paused!: (res: http.IncomingMessage) => void
  const gotRes = new Promise<http.IncomingMessage>((resolve) => (paused = resolve))
  const fetched = get(`${proxy.endpoint}/bytes/${BIG.length}`, (res) => {
    res.pause()
    paused(res)
  })
  const res = await gotRes
  await sleep(300)
  // One socket read can overshoot the cap before the source is paused.
  t.ok(proxy.buffered <= 2 * maxBufferedBytes, `proxy holds ${proxy.buffered} bytes`)
  t.ok(proxy.bytesToClient < BIG.length, 'the transfer waits for the reader')
  res.resume()
  const r = await fetched
  t.error(r.error)
  t.equal(sha256(r.body), sha256(BIG))
})

t.test('connections beyond maxConnections are reset', async (t) => {
  const proxy = await proxyFor(t, { maxConnections: 2 })
  const open = [net.connect(proxy.port, '127.0.0.1'), net.connect(proxy.port, '127.0.0.1')]
  t.teardown(() => open.forEach((s) => s.destroy()))
  await until(() => proxy.active === 2, 'two connections')
  const extra = net.connect(proxy.port, '127.0.0.1')
  const [err] = (await once(extra, 'error')) as [NodeJS.ErrnoException]
  t.equal(err.code, 'ECONNRESET')
  t.equal(proxy.connections, 3)
  t.equal(proxy.resets, 1)
})

t.test('refuses non-loopback targets', async (t) => {
  for (const targetHost of ['10.0.0.1', '0.0.0.0', 'example.com', '::ffff:10.0.0.1']) {
    await t.rejects(startFaultProxy({ targetHost, targetPort }), /loopback only/, targetHost)
  }
  const v6 = await proxyFor(t, { targetHost: '::1' })
  t.ok(v6.port > 0, '::1 accepted')
})

t.test('stops itself after maxLifetimeMs', async (t) => {
  const proxy = await proxyFor(t, { maxLifetimeMs: 100 })
  await until(() => proxy.closed, 'self-stop')
  const r = await get(`${proxy.endpoint}/bytes/10`)
  t.match(r.error, { code: 'ECONNREFUSED' })
})

t.test('close destroys open connections, is idempotent, and leaves nothing holding the process', async (t) => {
  const proxy = await proxyFor(t)
  let firstData!: () => void
  const streaming = new Promise<void>((resolve) => (firstData = resolve))
  const hanging = get(`${proxy.endpoint}/hang`, () => firstData())
  await streaming
  await Promise.all([proxy.close(), proxy.close()])
  t.ok((await hanging).error, 'open response ended by close')
  t.equal(proxy.active, 0)

  // A child process that leaves a proxy unclosed and closes another mid-response must exit by itself.
  const script = `
    import http from 'node:http';
    const { startFaultProxy } = await import(process.env.PROXY_MODULE);
    const server = http.createServer((req, res) => { res.writeHead(200); res.write('x'); });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const targetPort = server.address().port;
    await startFaultProxy({ targetPort });
    const proxy = await startFaultProxy({ targetPort });
    await new Promise((resolve, reject) => {
      http.get(proxy.endpoint, { agent: false }, (res) => {
        res.on('error', () => {});
        res.once('data', resolve);
      }).on('error', reject);
    });
    await proxy.close();
    server.close();
    console.log('closed');
  `
  const started = performance.now()
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, PROXY_MODULE: new URL('./support/fault-proxy.ts', import.meta.url).href },
    stdio: ['ignore', 'pipe', 'inherit'],
    // A leaked handle would keep the child alive for good (until tap's own timeout); a minute
    // tells that apart from a slow start (tsx compiles the proxy) on a loaded machine.
    timeout: 60_000,
  })
  t.teardown(() => child.kill())
  let out = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  const [code] = (await once(child, 'exit')) as [number | null]
  t.equal(code, 0)
  t.equal(out.trim(), 'closed')
  t.comment(`child exited in ${(performance.now() - started).toFixed(0)} ms`)
})
