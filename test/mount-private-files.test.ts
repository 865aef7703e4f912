// The mount's own files in shared places: a runtime directory that is a symlink or another
// user's is refused with one line, and a log path that is a symlink is never written through.
import t, { type Test } from 'tap'
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { useS3Server } from './support/s3-server.js'
import { runCli, tempMountpoint } from './support/o3mount.js'

const info = await useS3Server(t)

function runtime(t: Test): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'o3mount-xdg-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

t.test('a runtime directory of another user is refused', async (t) => {
  const xdg = runtime(t)
  mkdirSync(path.join(xdg, 'o3mount'), { mode: 0o755 })
  chownSync(path.join(xdg, 'o3mount'), 65534, 65534)
  const r = await runCli(info, [tempMountpoint(t), 'some-bucket'], { XDG_RUNTIME_DIR: xdg })
  t.equal(r.code, ExitCode.unsafePath)
  t.match(r.stderr, /belongs to uid 65534, not to you/)
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line')
})

t.test('a runtime directory that is a symlink is refused', async (t) => {
  const xdg = runtime(t)
  const elsewhere = runtime(t)
  symlinkSync(elsewhere, path.join(xdg, 'o3mount'))
  const r = await runCli(info, [tempMountpoint(t), 'some-bucket'], { XDG_RUNTIME_DIR: xdg })
  t.equal(r.code, ExitCode.unsafePath)
  t.match(r.stderr, /is a symbolic link/)
})

t.test('a log file that is a symlink is not written through', async (t) => {
  const dir = runtime(t)
  const target = path.join(dir, 'target')
  writeFileSync(target, 'untouched\n')
  symlinkSync(target, path.join(dir, 'mount.log'))
  const r = await runCli(info, [tempMountpoint(t), 'some-bucket', '--log-file', path.join(dir, 'mount.log')], { XDG_RUNTIME_DIR: runtime(t) })
  t.equal(r.code, ExitCode.unsafePath)
  t.equal(readFileSync(target, 'utf8'), 'untouched\n')
})
