/**
 * The latency bench's distance: the tests' fault proxy (test/support/fault-proxy.ts) in front of the
 * bench's S3 server, holding every chunk `delayMs` in each direction (RTT = 2 x delayMs), in a
 * process of its own so that forwarding hundreds of MB/s never shares an event loop with the bench
 * that times the reads.
 *
 *   node delay-proxy.js <targetPort> <delayMs>
 *
 * prints one line, {"endpoint":"http://127.0.0.1:PORT"}, once it listens, and forwards until
 * SIGTERM or until its stdin closes (the bench that started it is gone, however it ended).
 */
import { startFaultProxy } from '../../test/support/fault-proxy.js'

/** Longer than any bench run: the proxy stops itself after this even if nothing stops it. */
const LIFETIME_MS = 2 * 60 * 60 * 1000

const [port, delay] = process.argv.slice(2).map(Number)
if (!Number.isInteger(port) || !Number.isInteger(delay) || delay! < 0) {
  console.error('usage: delay-proxy.js <targetPort> <delayMs per direction, an integer >= 0>')
  process.exit(2)
}
const proxy = await startFaultProxy({ targetPort: port!, maxLifetimeMs: LIFETIME_MS })
proxy.setLatency(delay!)
const stop = () => void proxy.close().then(() => process.exit(0))
process.once('SIGTERM', stop)
// The proxy's own sockets do not keep a process alive; stdin does, until the parent closes it.
process.stdin.once('close', stop).resume()
console.log(JSON.stringify({ endpoint: proxy.endpoint }))
