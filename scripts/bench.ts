#!/usr/bin/env node
/**
 * `npm run bench [-- --only o3,mount,...]`: starts one local S3 server, runs each area's
 * benchmark in order, and writes each area's results as a table, with the machine and the date,
 * between the bench markers of README.md; the areas not run keep their tables.
 */
import './bench/threadpool.js'
import { mkdtempSync, rmSync } from 'node:fs'
import { cpus, tmpdir, totalmem, release } from 'node:os'
import { join } from 'node:path'
import { Command } from 'commander'
import { startS3Server } from '../test/support/s3-server.js'
import type { BenchContext, BenchModule, BenchRow } from './bench/types.js'
import { areaBlock, mergeBlocks } from './bench/table.js'
import { readReadmeSection, writeReadmeSection } from './readme.js'

const AREAS: Record<string, () => Promise<BenchModule>> = {
  o3: async () => (await import('./bench/o3-client.js')).run,
  mount: async () => (await import('./bench/mount.js')).run,
  latency: async () => (await import('./bench/latency.js')).run,
  trainer: async () => (await import('./bench/trainer.js')).run,
  distributed: async () => (await import('./bench/distributed.js')).run,
  checkpoint: async () => (await import('./bench/checkpoint.js')).run,
  e2e: async () => (await import('./bench/e2e.js')).run,
  webdataset: async () => (await import('./bench/webdataset.js')).run,
}

function machine(): string {
  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU'
  return `${cpus().length} x ${cpu}, ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Linux ${release()}, Node ${process.version}`
}

async function main(): Promise<void> {
  // Every peer here talks to servers on loopback: never through a proxy the environment names for the internet.
  for (const name of ['NO_PROXY', 'no_proxy']) process.env[name] = ['127.0.0.1,localhost,::1', process.env[name]].filter(Boolean).join(',')
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
  const blocks = new Map<string, string>()
  const failed: string[] = []
  try {
    for (const area of chosen) {
      ctx.log(`${area}: starting`)
      try {
        const run = await AREAS[area]!()
        const rows: BenchRow[] = await run(ctx)
        for (const r of rows) ctx.log(`${r.area} | ${r.case} | ${r.value}${r.target ? ` | ${r.target}` : ''}`)
        blocks.set(area, areaBlock(area, rows, new Date().toISOString().slice(0, 10), machine()))
      } catch (err) {
        // The other areas' results still count; this one keeps its last table.
        failed.push(area)
        ctx.log(`${area}: failed: ${err instanceof Error ? err.stack : err}`)
      }
    }
  } finally {
    await server.stop()
    rmSync(workDir, { recursive: true, force: true })
  }
  console.log([...blocks.values()].join('\n\n'))
  if (opts.readme) writeReadmeSection('bench', mergeBlocks(readReadmeSection('bench'), blocks, Object.keys(AREAS)))
  if (failed.length > 0) throw new Error(`these areas failed and kept their earlier tables: ${failed.join(', ')}`)
}

main().catch((err) => {
  console.error(`bench: ${err instanceof Error ? err.message : err}`)
  process.exit(1)
})
