import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { projectRoot } from '../lib/paths.js'

/** The README's generated sections sit between `<!-- NAME:start -->` and `<!-- NAME:end -->`. */
function markers(readme: string, name: string): [number, number, string] {
  const start = `<!-- ${name}:start -->`
  const a = readme.indexOf(start)
  const b = readme.indexOf(`<!-- ${name}:end -->`)
  if (a < 0 || b < a) throw new Error(`README.md has no ${start} ... <!-- ${name}:end --> section`)
  return [a + start.length, b, start]
}

const readmePath = () => join(projectRoot(), 'README.md')

export function readReadmeSection(name: string): string {
  const readme = readFileSync(readmePath(), 'utf8')
  const [a, b] = markers(readme, name)
  return readme.slice(a, b).trim()
}

export function writeReadmeSection(name: string, body: string): void {
  const readme = readFileSync(readmePath(), 'utf8')
  const [a, b] = markers(readme, name)
  writeFileSync(readmePath(), `${readme.slice(0, a)}\n${body}\n${readme.slice(b)}`)
}
