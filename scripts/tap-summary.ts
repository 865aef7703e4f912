import { readFileSync } from 'node:fs'

/**
 * Counts the tests of a TAP log written by `tap --reporter=tap`: each subtest directly inside a
 * test file is one test; a file that failed without a failing subtest (a crash, a timeout) counts
 * as one failure of its own. Names each failure on a line of its own (CI keeps only the log's
 * tail, so a failure far up the log must be named again near its end), then prints
 * "N passed, N failed[, N skipped]" last and exits 1 on any failure.
 */
const [logPath, extraPassed = '0', extraFailed = '0'] = process.argv.slice(2)
const lines = readFileSync(logPath!, 'utf8').split('\n')
let passed = Number(extraPassed)
let failed = Number(extraFailed)
let skipped = 0
const failedInFile: string[] = []
const failures: string[] = []
for (const line of lines) {
  const sub = /^ {4}(not ok|ok) \d+ - (.*)$/.exec(line)
  if (sub) {
    if (/# (SKIP|TODO)/i.test(line)) skipped++
    else if (sub[1] === 'ok') passed++
    else {
      failed++
      failedInFile.push(sub[2]!.replace(/ # time=.*$/, ''))
    }
    continue
  }
  const file = /^(not ok|ok) \d+ - (\S+)/.exec(line)
  if (file) {
    if (file[1] === 'not ok' && failedInFile.length === 0) {
      failed++
      failures.push(`${file[2]}: the file failed outside its tests (a crash or a timeout)`)
    }
    for (const name of failedInFile) failures.push(`${file[2]}: ${name}`)
    failedInFile.length = 0
  }
}
for (const failure of failures) console.log(`failed: ${failure}`)
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`)
process.exit(failed > 0 ? 1 : 0)
