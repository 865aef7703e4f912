// o3mount's control socket (issue 21, announced order) against the real server and real mounts:
// the protocol (good requests queued, every kind of bad one refused with nothing queued, mode 0600,
// pipelining, several clients, clients that leave early), the socket's path claimed with care, and a
// shuffled order announced first fetched before its files are opened, within the memory budget,
// files past the budget waiting their turn. Everything is observed through answers and the stats
// file, never through timing.
import t, { type Test } from 'tap'
import { execFile, execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { mapLimit } from '../scripts/bench/util.js'
import { MAX_REQUEST_BYTES, type ControlAnswer } from '../lib/control-protocol.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { freshStats, mount, runCli, statsWhen, tempMountpoint } from './support/o3mount.js'
import { buildImageFolder } from './support/imagefolder.js'
import { shuffled } from './support/shuffle.js'
import { projectRoot } from '../lib/paths.js'

const KiB = 1024
const MiB = 1 << 20
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')
const BUCKET = `mount-announce-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())

interface File {
  key: string
  body: Buffer
}
// 40 small files (one block each) in two directories, and 16 files of exactly one 1 MiB block.
const small: File[] = Array.from({ length: 40 }, (_, i) => ({
  key: `small/${i % 2 ? 'b' : 'a'}/${String(i).padStart(3, '0')}.bin`,
  body: randomBytes(96 * KiB + i),
}))
const blocks: File[] = Array.from({ length: 16 }, (_, i) => ({ key: `blocks/${String(i).padStart(2, '0')}.bin`, body: randomBytes(MiB) }))
await mapLimit([...small, ...blocks], 8, (f) => client.put(f.key, f.body))

/** A fresh directory of ours (mode 0700) for a socket, removed after the test. */
function socketDir(t: Test): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'o3mount-sock-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const request = (paths: unknown[]) => `${JSON.stringify({ op: 'prefetch', paths })}\n`

interface ControlClient {
  socket: net.Socket
  write(text: string): void
  /** The next n answer lines. */
  answers(n: number): Promise<ControlAnswer[]>
  close(): void
}

async function connect(socketPath: string): Promise<ControlClient> {
  const socket = net.connect(socketPath)
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  socket.setEncoding('utf8')
  let buffered = ''
  const lines: string[] = []
  let wake: (() => void) | undefined
  socket.on('data', (text: string) => {
    buffered += text
    for (let nl = buffered.indexOf('\n'); nl !== -1; nl = buffered.indexOf('\n')) {
      lines.push(buffered.slice(0, nl))
      buffered = buffered.slice(nl + 1)
    }
    wake?.()
  })
  socket.on('close', () => wake?.())
  return {
    socket,
    write: (text) => void socket.write(text),
    async answers(n) {
      while (lines.length < n) {
        if (socket.destroyed || socket.readableEnded) throw new Error(`the mount closed the connection after ${lines.length} of ${n} answers`)
        await new Promise<void>((resolve) => (wake = resolve))
      }
      return lines.splice(0, n).map((l) => JSON.parse(l) as ControlAnswer)
    },
    close: () => socket.destroy(),
  }
}

t.test('the control socket: mode 0600, requests checked whole, answered in order, several clients', async (t) => {
  const sock = path.join(socketDir(t), 'control.sock')
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', sock, '--metadata-ttl', 'indefinite'] })
  const st = lstatSync(sock)
  t.ok(st.isSocket(), 'a Unix socket')
  t.equal(st.mode & 0o777, 0o600, 'mode 0600')

  const c = await connect(sock)
  t.teardown(() => c.close())
  const bad: [string, RegExp][] = [
    ['not json\n', /not JSON/],
    ['[1,2]\n', /must be a JSON object/],
    ['{"op":"evict","paths":[]}\n', /unknown op "evict"/],
    ['{"op":"prefetch"}\n', /"paths" must be an array/],
    ['{"op":"prefetch","paths":["small/a/000.bin"],"then":1}\n', /unknown field "then"/],
    [request(['/small/a/000.bin']), /paths\[0\].*starts with "\/"/],
    [request(['small/../small/a/000.bin']), /paths\[0\].*"\.\." segment/],
    [request(['small//a/000.bin']), /paths\[0\].*empty path segment/],
    [request(['small/a/']), /paths\[0\].*ends with "\/"/],
    [request([42]), /paths\[0\] is not a string/],
    [request(['small/a']), /paths\[0\] "small\/a": .*directory/],
    // A good path first, then a missing one: the good one is not queued either.
    [request(['small/a/000.bin', 'small/a/999.bin']), /paths\[1\] "small\/a\/999\.bin": no such file/],
    [request(Array<string>(10_001).fill('small/a/000.bin')), /10001 paths in one request; send at most 10000/],
    [request(['x'.repeat(MAX_REQUEST_BYTES)]), new RegExp(`longer than ${MAX_REQUEST_BYTES} bytes`)],
  ]
  // All in one write: pipelined, each answered in turn, the over-long line skipped to its end.
  c.write(bad.map(([line]) => line).join(''))
  const refusals = await c.answers(bad.length)
  refusals.forEach((a, i) => {
    t.equal(a.ok, false, `refused: ${bad[i]![0].slice(0, 60).trim()}`)
    if (!a.ok) t.match(a.error, bad[i]![1])
  })
  const afterBad = await statsWhen(m, (s) => s.announced.requests === bad.length)
  t.equal(afterBad.announced.refused, bad.length, 'every one counted as refused')
  t.equal(afterBad.announced.files, 0, 'and nothing was queued')
  t.equal(afterBad.fetch.blocksFetched, 0, 'nor fetched')

  // Good requests, pipelined: answered in order.
  const paths = small.map((f) => f.key)
  c.write(request(paths.slice(0, 2)) + request(paths.slice(2, 5)) + request([]))
  t.same(
    await c.answers(3),
    [
      { ok: true, queued: 2 },
      { ok: true, queued: 3 },
      { ok: true, queued: 0 },
    ],
    'pipelined requests answered in order',
  )

  // Two more clients at once, one of which shuts its side down after writing (as socat does).
  const [d, e] = await Promise.all([connect(sock), connect(sock)])
  t.teardown(() => (d.close(), e.close()))
  d.write(request(paths.slice(5, 9)))
  e.socket.end(request(paths.slice(9, 10)))
  t.same(await Promise.all([d.answers(1), e.answers(1)]), [[{ ok: true, queued: 4 }], [{ ok: true, queued: 1 }]], 'two clients at once, one half-closed')

  // A client that goes away at once, mid-request and without reading its answer, harms nothing.
  const gone = net.connect(sock)
  gone.on('error', () => {})
  gone.write(request(paths.slice(10, 12)).slice(0, 20))
  gone.destroy()
  d.write(request(paths.slice(12, 13)))
  t.same(await d.answers(1), [{ ok: true, queued: 1 }], 'the mount still answers')

  const s = await statsWhen(m, (s) => s.announced.files === 11 && s.announced.waiting === 0)
  t.equal(s.announced.files, 11, 'the files of the accepted requests were queued')
  t.equal(s.announced.prefetched + s.announced.skipped, 11, 'and each was fetched or passed over')
  t.equal(s.announced.requests, bad.length + 6, 'the request cut short by its client was not answered or counted')
  await m.stop()
  t.notOk(existsSync(sock), 'the socket is removed when the mount stops')
})

t.test('past 64 connections a client is refused with a line, and one that never closes holds the mount nothing', async (t) => {
  const sock = path.join(socketDir(t), 'control.sock')
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', sock] })
  const clients = await Promise.all(Array.from({ length: 64 }, () => connect(sock)))
  t.teardown(() => clients.forEach((c) => c.close()))
  // One more writes a request and keeps its side open after the mount's answer and end (a client
  // that never closes): the mount must not wait on it to stop.
  const extra = net.connect({ path: sock, allowHalfOpen: true })
  t.teardown(() => extra.destroy())
  extra.on('error', () => {})
  extra.write(request(['small/a/000.bin']))
  let answer = ''
  extra.on('data', (d: Buffer) => (answer += d.toString()))
  // Its end, or a reset (then the answer may be cut short), not a wait for ever.
  await new Promise((resolve) => (extra.once('end', resolve), extra.once('close', resolve)))
  t.same(JSON.parse(answer), { ok: false, error: 'already serving 64 connections; close one first' })
  clients[0]!.write(request(['small/a/000.bin']))
  t.same(await clients[0]!.answers(1), [{ ok: true, queued: 1 }], 'the others are served')
  await m.stop()
  t.equal(m.child.signalCode, null, `the mount stopped by itself, not killed after 5 s (${String(m.child.signalCode)})`)
  t.notOk(existsSync(sock), 'and removed its socket')
})

t.test('a client that sends without reading its answers is read no further once they back up', async (t) => {
  const sock = path.join(socketDir(t), 'control.sock')
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', sock] })
  const flood = net.connect(sock)
  flood.on('error', () => {})
  t.teardown(() => flood.destroy())
  flood.pause()
  // Empty lines, each refused with an answer of about 60 bytes that the client never reads.
  const LINES = 300_000
  flood.write(Buffer.alloc(LINES, 10))
  let served = -1
  for (;;) {
    const { requests } = (await freshStats(m)).announced
    if (requests === served || requests >= LINES) break
    served = requests
  }
  // Answered regardless, they were all read and their answers held in the mount's memory.
  t.ok(served < LINES / 2, `reading stopped once the answers backed up: ${served} of ${LINES} lines served`)
  t.equal(m.child.exitCode, null, 'the mount lives')
})

t.test("the socket's path: nothing is replaced that should not be", async (t) => {
  const dir = socketDir(t)
  const start = (sock: string) => runCli(info, [tempMountpoint(t), BUCKET, '--control-socket', sock])

  const file = path.join(dir, 'a-file')
  writeFileSync(file, 'precious')
  const onFile = await start(file)
  t.equal(onFile.code, ExitCode.unsafePath, 'a file that is not a socket: exit 89')
  t.match(onFile.stderr, /exists and is not a socket; refusing to replace it/)
  t.equal(readFileSync(file, 'utf8'), 'precious', 'the file is untouched')

  const live = path.join(dir, 'live.sock')
  const server = net.createServer().listen(live)
  await new Promise((resolve) => server.once('listening', resolve))
  t.teardown(() => server.close())
  const onLive = await start(live)
  t.equal(onLive.code, ExitCode.unsafePath, 'a socket someone listens on: exit 89')
  t.match(onLive.stderr, /another process listens on it/)

  // Left behind by a process that died: bound, never unlinked.
  const stale = path.join(dir, 'stale.sock')
  execFileSync('/usr/bin/python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', stale])
  chownSync(stale, 65534, 65534)
  const onOthers = await start(stale)
  t.equal(onOthers.code, ExitCode.unsafePath, "another user's socket: exit 89")
  t.match(onOthers.stderr, /is a socket of uid 65534, not yours/)
  chownSync(stale, process.getuid!(), process.getgid!())
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', stale] })
  const c = await connect(stale)
  t.teardown(() => c.close())
  c.write(request([small[0]!.key]))
  t.same(await c.answers(1), [{ ok: true, queued: 1 }], 'a stale socket is replaced by a live one')
  await m.stop()

  const long = await start(path.join(dir, 'x'.repeat(120)))
  t.equal(long.code, ExitCode.badOption, 'a path too long for a socket: exit 80')
  t.match(long.stderr, /is longer than 107 bytes, the most a Unix socket's path may be/)
  const nowhere = await start(path.join(dir, 'no-such-dir', 'control.sock'))
  t.equal(nowhere.code, ExitCode.badOption, 'a directory that is not there: exit 80')
  t.match(nowhere.stderr, /its directory cannot be used/)

  const open = path.join(dir, 'open')
  mkdirSync(open)
  chmodSync(open, 0o777)
  const inOpen = await start(path.join(open, 'control.sock'))
  t.equal(inOpen.code, ExitCode.unsafePath, 'a directory anyone may write into: exit 89')
  t.match(inOpen.stderr, /others may write into .* not sticky/)
})

t.test('a shuffled order announced first is fetched before its files are opened', async (t) => {
  const sock = path.join(socketDir(t), 'control.sock')
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', sock, '--metadata-ttl', 'indefinite'] })
  const order = shuffled(small, 7)
  const c = await connect(sock)
  t.teardown(() => c.close())
  c.write(request(order.map((f) => f.key)))
  t.same(await c.answers(1), [{ ok: true, queued: order.length }], 'queued')
  const before = await statsWhen(m, (s) => s.fetch.blocksFetched === order.length && s.announced.waiting === 0)
  t.equal(before.announced.prefetched, order.length, 'every announced file was fetched ahead')
  t.equal(before.fetch.blocksPrefetched, order.length, 'by the queue, before any reader asked')
  t.equal(before.reads.count, 0, 'nothing was read yet')

  for (const f of order) t.equal(sha256(await fs.readFile(path.join(m.mountpoint, f.key))), sha256(f.body), f.key)
  const after = await statsWhen(m, (s) => s.announced.used === order.length)
  t.equal(after.announced.used, order.length, 'each file read was one the queue had fetched')
  t.equal(after.fetch.blocksFetched, order.length, 'no read had to fetch anything')
  t.ok(after.cache.memHits - before.cache.memHits >= order.length, 'the reads were served from the cache')
  t.equal(after.fetch.prefetchWasted, 0, 'nothing fetched ahead was thrown away')
})

t.test('past the budget, announced files wait their turn and are fetched as readers use the others', async (t) => {
  const sock = path.join(socketDir(t), 'control.sock')
  // 16 MiB of memory: at most 8 MiB of announced blocks no reader has taken yet.
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', sock, '--metadata-ttl', 'indefinite', '--cache-mem', '16M', '--verify', 'off'] })
  const c = await connect(sock)
  t.teardown(() => c.close())
  c.write(request(blocks.map((f) => f.key)))
  t.same(await c.answers(1), [{ ok: true, queued: blocks.length }], 'queued')
  const full = await statsWhen(m, (s) => s.fetch.blocksFetched === 8 && s.announced.waiting === 8)
  t.equal(full.fetch.blocksFetched, 8, 'half the budget fetched ahead')
  t.equal(full.announced.waiting, 8, 'the other files wait')
  // Each pair of files read makes room for the next two.
  for (let k = 0; k < blocks.length; k += 2) {
    for (const f of blocks.slice(k, k + 2)) t.equal(sha256(await fs.readFile(path.join(m.mountpoint, f.key))), sha256(f.body), f.key)
    const want = Math.min(blocks.length, 10 + k)
    const s = await statsWhen(m, (s) => s.fetch.blocksFetched === want)
    t.equal(s.fetch.blocksFetched, want, `after ${k + 2} files read, ${want} fetched`)
  }
  const end = await statsWhen(m, (s) => s.announced.used === blocks.length)
  t.equal(end.announced.used, blocks.length, 'every file was read from what the queue fetched')
  t.equal(end.announced.prefetched, blocks.length, 'each fetched ahead')
  t.equal(end.fetch.blocksPrefetched, blocks.length, 'no read had to fetch')
  t.equal(end.fetch.prefetchWasted, 0, 'none was evicted before it was read')
  t.ok(end.memory.peakUsedBytes <= 16 * MiB, `within the budget (peak ${end.memory.peakUsedBytes})`)
})

// The wrapper as a user would use it, around a stock RandomSampler and DataLoader. The test's own
// subclass waits, once the order is announced, until the stats file shows the mount has fetched it
// all: so every read of the epoch must then come from what the queue fetched (and a failure
// says which step missed, rather than depending on who won a race).
const ANNOUNCING_LOADER = `
import json, os, sys, time, warnings
sys.path.insert(0, os.path.join(os.getcwd(), 'examples', 'pytorch'))
import torch
from torch.utils.data import DataLoader, RandomSampler
from torchvision import datasets, transforms
from announce import AnnouncingSampler, paths_below

mnt, sock, stats_file, missing = sys.argv[1:5]

def stats_when(ok):
    deadline = time.time() + 120
    while True:
        with open(stats_file) as f:
            s = json.load(f)
        if ok(s) or time.time() > deadline:
            return s
        time.sleep(0.25)

class FetchedFirst(AnnouncingSampler):
    def __iter__(self):
        order = super().__iter__()
        n = len(self.dataset_paths)
        stats_when(lambda s: s['announced']['prefetched'] >= n and s['announced']['waiting'] == 0 and s['fetch']['blocksFetched'] >= n)
        return order

data = datasets.ImageFolder(os.path.join(mnt, 'images'), transform=transforms.ToTensor())
paths = paths_below(mnt, [p for p, _ in data.samples])
sampler = FetchedFirst(RandomSampler(data, generator=torch.Generator().manual_seed(5)), paths, sock)
loader = DataLoader(data, sampler=sampler, batch_size=8, num_workers=2)
labels = []
for x, y in loader:
    labels += y.tolist()

# A socket that is not there: the loader goes on, one warning for the whole run.
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    broken = AnnouncingSampler(RandomSampler(data), paths, missing)
    epochs = [len(list(iter(broken))), len(list(iter(broken)))]
    broken.announcer.flush()
print(json.dumps({'paths': paths[:3], 'labels': sorted(labels), 'expected': sorted(data.targets), 'epochs': epochs,
                  'warnings': [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}))
`

t.test('examples/pytorch/announce.py: a stock DataLoader over ImageFolder on the mount announces its order', async (t) => {
  const local = mkdtempSync(path.join(tmpdir(), 'o3mount-announce-py-'))
  t.teardown(() => rmSync(local, { recursive: true, force: true }))
  const tree = buildImageFolder(path.join(local, 'images'), { perClass: 4 })
  await mapLimit(tree.files, 8, (f) => client.put(`images/${path.relative(tree.root, f.path)}`, readFileSync(f.path)))
  const dir = socketDir(t)
  const sock = path.join(dir, 'control.sock')
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', sock, '--metadata-ttl', 'indefinite'] })
  const out = await new Promise<{ paths: string[]; labels: number[]; expected: number[]; epochs: number[]; warnings: string[] }>((resolve, reject) =>
    execFile(
      '/usr/bin/python3',
      ['-c', ANNOUNCING_LOADER, m.mountpoint, sock, m.statsFile, path.join(dir, 'missing.sock')],
      { cwd: projectRoot(), env: { ...process.env, OMP_NUM_THREADS: '1' }, timeout: 300_000, maxBuffer: 1 << 24 },
      (err, stdout, stderr) => (err ? reject(new Error(`python failed: ${stderr || err.message}`)) : resolve(JSON.parse(stdout.trim().split('\n').pop()!))),
    ),
  )
  const n = tree.files.length
  t.match(out.paths[0], /^images\/[a-z]+\/\d{5}\.(png|jpg)$/, 'paths relative to the mount root')
  t.same(out.labels, out.expected, 'the loader read every image once')
  const s = await statsWhen(m, (s) => s.announced.used === n)
  t.equal(s.announced.files, n, 'the epoch announced every image')
  t.equal(s.announced.prefetched, n, 'the mount fetched each before it was opened')
  t.equal(s.announced.used, n, 'and the loader read each from there')
  t.equal(s.fetch.blocksFetched, n, 'no read had to fetch anything')
  t.same(out.epochs, [n, n], 'with the socket missing, the sampler still yields its epochs')
  t.equal(out.warnings.length, 1, 'and warns once')
  t.match(out.warnings[0], /announcing the read order to o3mount at .*missing\.sock failed .*the loader goes on without it/)
})
