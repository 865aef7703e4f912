import { readFileSync } from 'node:fs'

/**
 * Counts the tests of a TAP log written by `tap --reporter=tap`: each subtest directly inside a
 * test file is one test; a file that failed without a failing subtest (a crash, a timeout) counts
 * as one failure of its own. Prints "N passed, N failed[, N skipped]" and exits 1 on any failure.
 */
const [logPath, extraPassed = '0', extraFailed = '0'] = process.argv.slice(2)
const lines = readFileSync(logPath!, 'utf8').split('\n')
let passed = Number(extraPassed)
let failed = Number(extraFailed)
let skipped = 0
let fileFailures = 0
for (const line of lines) {
  const sub = /^ {4}(not ok|ok) \d+/.exec(line)
  if (sub) {
    if (/# (SKIP|TODO)/i.test(line)) skipped++
    else if (sub[1] === 'ok') passed++
    else {
      failed++
      fileFailures++
    }
    continue
  }
  const file = /^(not ok|ok) \d+ - /.exec(line)
  if (file) {
    if (file[1] === 'not ok' && fileFailures === 0) failed++
    fileFailures = 0
  }
}
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`)
process.exit(failed > 0 ? 1 : 0)
