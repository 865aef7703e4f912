// The C++ unit tests (scripts/test-native): each built alone under AddressSanitizer and UBSan,
// where any out-of-bounds access, overflow or leak aborts the run. Needs g++ and libasan/libubsan.
import { spawn } from 'node:child_process'
import path from 'node:path'
import t from 'tap'

const root = path.resolve(import.meta.dirname, '..')

t.test('scripts/test-native passes under ASan and UBSan', async (t) => {
  const { code, out } = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn(path.join(root, 'scripts/test-native'), [], { cwd: root })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    child.on('close', (code) => resolve({ code, out }))
  })
  for (const line of out.split('\n').filter((l) => /^(ok|not ok) - /.test(l))) t.comment(line)
  t.equal(code, 0, out.slice(-6000))
  t.match(out, /^\d+ checks, 0 failed$/m)
})
