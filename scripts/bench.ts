#!/usr/bin/env node
/**
 * `npm run bench [-- --only o3,mount,...]`: starts one local S3 server, runs each area's
 * benchmark in order (later areas compare with earlier ones' numbers), and writes the results
 * as a table between the bench markers of README.md, with the machine and the date.
 */
import './bench/threadpool.js'
import { mkdtempSync, rmSync } from 'node:fs'
import { cpus, tmpdir, totalmem, release } from 'node:os'
import { join } from 'node:path'
import { Command } from 'commander'
import { startS3Server } from '../test/support/s3-server.js'
import type { BenchContext, BenchModule, BenchRow } from './bench/types.js'
import { writeReadmeSection } from './readme.js'

const AREAS: Record<string, () => Promise<BenchModule>> = {
  o3: async () => (await import('./bench/o3-client.js')).run,
  mount: async () => (await import('./bench/mount.js')).run,
  latency: async () => (await import('./bench/latency.js')).run,
  trainer: async () => (await import('./bench/trainer.js')).run,
  distributed: async () => (await import('./bench/distributed.js')).run,
  checkpoint: async () => (await import('./bench/checkpoint.js')).run,
  e2e: async () => (await import('./bench/e2e.js')).run,
}

function machine(): string {
  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU'
  return `${cpus().length} x ${cpu}, ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Linux ${release()}, Node ${process.version}`
}

function table(rows: BenchRow[]): string {
  const esc = (s = '') => s.replace(/\|/g, '\\|')
  const head = '| area | case | result | target | same run |\n|---|---|---|---|---|'
  return [head, ...rows.map((r) => `| ${esc(r.area)} | ${esc(r.case)} | ${esc(r.value)} | ${esc(r.target)} | ${esc(r.note)} |`)].join('\n')
}

async function main(): Promise<void> {
  const opts = new Command('bench')
    .option('--only <areas>', `comma-separated subset of ${Object.keys(AREAS).join(',')}`)
    .option('--no-readme', 'print the table without writing README.md')
    .parse()
    .opts<{ only?: string; readme: boolean }>()
  const chosen = opts.only ? opts.only.split(',') : Object.keys(AREAS)
  for (const a of chosen) if (!AREAS[a]) throw new Error(`unknown bench area ${a}; choose from ${Object.keys(AREAS).join(', ')}`)
  const server = await startS3Server()
  const workDir = mkdtempSync(join(tmpdir(), 'o3-bench-'))
  const ctx: BenchContext = { server, workDir, metrics: {}, log: (line) => console.error(`[bench] ${line}`) }
  const rows: BenchRow[] = []
  try {
    for (const area of chosen) {
      ctx.log(`${area}: starting`)
      const run = await AREAS[area]!()
      const got = await run(ctx)
      for (const r of got) ctx.log(`${r.area} | ${r.case} | ${r.value}${r.target ? ` | ${r.target}` : ''}`)
      rows.push(...got)
    }
  } finally {
    await server.stop()
    rmSync(workDir, { recursive: true, force: true })
  }
  const md = `Measured by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}, ${machine()}; S3 server: OpenStack Swift s3api on loopback.\n\n${table(rows)}`
  console.log(md)
  // A partial run only prints: the README's table always comes from one complete run.
  if (opts.readme && !opts.only) writeReadmeSection('bench', md)
}

main().catch((err) => {
  console.error(`bench: ${err instanceof Error ? err.message : err}`)
  process.exit(1)
})
