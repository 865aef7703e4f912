// The mount core's C++ unit tests (cpp/mount/tests/*_test.cpp) under AddressSanitizer and UBSan,
// through scripts/test-native, so that the tap suite (and CI) runs them.
import path from 'node:path'
import t from 'tap'
import { projectRoot } from '../lib/paths.js'
import { run } from './support/native-tools.js'

t.test('scripts/test-native builds the mount core under ASan+UBSan and its unit tests pass', async (t) => {
  const r = await run(path.join(projectRoot(), 'scripts/test-native'), [], { timeoutMs: 900_000 })
  t.equal(r.code, 0, `scripts/test-native exited ${r.code ?? r.signal}:\n${r.stdout}${r.stderr}`)
  t.match(r.stdout, /100% tests passed, 0 tests failed/)
})
