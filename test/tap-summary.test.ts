// The suite's last lines, which CI keeps when it keeps nothing else: each failure named, then the counts.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cliCommand } from '../lib/paths.js'

const LOG = `TAP version 14
# Subtest: test/a.test.ts
    # Subtest: fine
        ok 1 - an assertion
        1..1
    ok 1 - fine # time=1ms
    # Subtest: breaks sometimes
        not ok 1 - an assertion
        1..1
    not ok 2 - breaks sometimes # time=3ms
    1..2
not ok 1 - test/a.test.ts # time=5ms
# Subtest: test/b.test.ts
not ok 2 - test/b.test.ts # time=5ms
# Subtest: test/c.test.ts
    ok 1 - needs a GPU # SKIP no GPU here
    ok 2 - runs # time=2ms
    1..2
ok 3 - test/c.test.ts
1..3
`

function summary(log: string, ...extra: string[]): Promise<{ code: number; lines: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'tap-summary-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'log'), log)
  const cli = cliCommand('scripts/tap-summary.ts')
  return new Promise((resolve) =>
    execFile(process.execPath, [...cli.execArgv, cli.file, join(dir, 'log'), ...extra], (err, out) =>
      resolve({ code: typeof err?.code === 'number' ? err.code : 0, lines: out.trim().split('\n') }),
    ),
  )
}

t.test('each failure is named above the counts, which come last', async (t) => {
  const { code, lines } = await summary(LOG, '2', '0')
  t.same(lines, [
    'failed: test/a.test.ts: breaks sometimes',
    'failed: test/b.test.ts: the file failed outside its tests (a crash or a timeout)',
    '4 passed, 2 failed, 1 skipped',
  ])
  t.equal(code, 1, 'a failure fails the run')
})

t.test('a clean log is the counts alone, and exit 0', async (t) => {
  const clean = LOG.split('# Subtest: test/c.test.ts')[1]!
  const { code, lines } = await summary(`# Subtest: test/c.test.ts${clean}`, '2', '0')
  t.same(lines, ['3 passed, 0 failed, 1 skipped'])
  t.equal(code, 0)
})
