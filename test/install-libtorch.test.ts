// scripts/install-libtorch's download path, against a small stand-in libtorch zip served from
// loopback: the zip is fetched, its sha256 checked and it is unpacked into LIBTORCH_DIR; a wrong
// sha256 is refused with a clear error and leaves nothing unpacked. Also the LIBTORCH override.
import { execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'

const script = path.resolve(import.meta.dirname, '../scripts/install-libtorch')
const work = mkdtempSync(path.join(tmpdir(), 'o3-install-libtorch-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))

// A zip shaped like the official one: libtorch/share/cmake/Torch/TorchConfig.cmake and a library.
function makeZip(name: string, withConfig: boolean): Buffer {
  const src = path.join(work, `src-${name}`)
  mkdirSync(path.join(src, 'libtorch/share/cmake/Torch'), { recursive: true })
  mkdirSync(path.join(src, 'libtorch/lib'))
  if (withConfig) writeFileSync(path.join(src, 'libtorch/share/cmake/Torch/TorchConfig.cmake'), '# stand-in\n')
  writeFileSync(path.join(src, 'libtorch/lib/libtorch.so'), 'not really\n')
  const zip = path.join(work, `${name}.zip`)
  execFileSync('/usr/bin/python3', ['-m', 'zipfile', '-c', zip, 'libtorch'], { cwd: src })
  return readFileSync(zip)
}

const good = makeZip('good', true)
const noConfig = makeZip('no-config', false)
const files: Record<string, Buffer> = { '/libtorch.zip': good, '/no-config.zip': noConfig }
const requests: string[] = []
const server = http.createServer((req, res) => {
  requests.push(req.url ?? '')
  const body = files[req.url ?? '']
  res.writeHead(body ? 200 : 404).end(body)
})
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
t.teardown(() => server.close())
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex')

// Runs the script asynchronously: the HTTP server lives in this process's event loop.
function run(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(script, args, { env: { ...process.env, ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

t.test('downloads, verifies and unpacks the zip', async (t) => {
  const dir = path.join(work, 'ok')
  const r = await run(['--download', '--print-prefix'], {
    LIBTORCH_DIR: dir,
    LIBTORCH_URL: `${base}/libtorch.zip`,
    LIBTORCH_SHA256: sha256(good),
  })
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout.trim(), path.join(dir, 'libtorch'), 'prints the CMake prefix')
  t.ok(existsSync(path.join(dir, 'libtorch/share/cmake/Torch/TorchConfig.cmake')))
  t.same(readdirSync(dir), ['libtorch'], 'no download leftovers')
  t.ok(requests.includes('/libtorch.zip'))
})

t.test('a wrong sha256 is refused and nothing is unpacked', async (t) => {
  const dir = path.join(work, 'bad-sha')
  const r = await run(['--download', '--print-prefix'], {
    LIBTORCH_DIR: dir,
    LIBTORCH_URL: `${base}/libtorch.zip`,
    LIBTORCH_SHA256: '0'.repeat(64),
  })
  t.equal(r.code, 1)
  t.equal(r.stdout, '', 'no prefix printed')
  t.match(r.stderr, `sha256 mismatch for ${base}/libtorch.zip: expected ${'0'.repeat(64)}, got ${sha256(good)} (nothing was unpacked)`)
  t.same(readdirSync(dir), [], 'nothing left behind')
})

t.test('a zip without a libtorch in it is refused', async (t) => {
  const dir = path.join(work, 'no-config')
  const r = await run(['--download'], { LIBTORCH_DIR: dir, LIBTORCH_URL: `${base}/no-config.zip`, LIBTORCH_SHA256: sha256(noConfig) })
  t.equal(r.code, 1)
  t.match(r.stderr, /holds no libtorch\/share\/cmake\/Torch\/TorchConfig\.cmake/)
  t.same(readdirSync(dir), [])
})

t.test('a failed download is reported', async (t) => {
  const dir = path.join(work, 'missing')
  const r = await run(['--download'], { LIBTORCH_DIR: dir, LIBTORCH_URL: `${base}/nothing.zip`, LIBTORCH_SHA256: sha256(good) })
  t.equal(r.code, 1)
  t.match(r.stderr, `download failed: ${base}/nothing.zip`)
  t.same(readdirSync(dir), [])
})

t.test('LIBTORCH comes first, and must hold a libtorch', async (t) => {
  const unpacked = path.join(work, 'ok', 'libtorch')
  const r = await run(['--print-prefix'], { LIBTORCH: unpacked })
  t.equal(r.code, 0)
  t.equal(r.stdout.trim(), unpacked)
  const bad = await run(['--print-prefix'], { LIBTORCH: work })
  t.equal(bad.code, 1)
  t.match(bad.stderr, `LIBTORCH=${work} holds no share/cmake/Torch/TorchConfig.cmake`)
})
