import { access, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { dataLineage, type DataLineage } from '../lib/content/lineage.js'
import { Trainer, listImageFolder, listWebDatasetShards, type DataSpec, type DatasetInfo, type DeviceInfo, type MallocInfo } from '../addon/index.js'
import { CheckpointStore, CheckpointWriter, type LoadedCheckpoint } from '../checkpoint/index.js'
import type { InputRecord } from '../checkpoint/meta.js'
import { TrustPolicy } from '../checkpoint/trust.js'
import { distributedFromEnv } from './distributed.js'
import { applyInitWeights } from './init-weights.js'
import { NodeShare } from './node-share.js'
import { O3Client } from '../lib/o3/index.js'
import { withDeadline } from '../lib/fs-deadline.js'
import { createProgress, type Progress } from '../lib/progress.js'
import { silentLogger, type Logger } from '../lib/log.js'
import { OptionsError, type TrainOptions } from './options.js'
import { threadSetup, type ThreadSetup } from './thread-setup.js'
import type { OrderAnnouncer } from './announce.js'

export interface TrainHooks {
  logger?: Logger
  /** Progress bars on a TTY, JSON lines otherwise; off for library use unless asked. */
  progress?: boolean
  /** Aborted: stop at the next step boundary and write a final checkpoint. */
  stop?: AbortSignal
  /** Aborted: give up at once, aborting any upload in flight. */
  kill?: AbortSignal
  /** The data directory is a mount this run made, which checks every read against the dataset manifest. */
  readsVerified?: boolean
  /** Set when this rank shares its node with others: work done once per node goes through it. */
  nodeShare?: NodeShare
  /** Where each epoch's read order is announced (the data's o3mount), if anywhere. */
  announcer?: OrderAnnouncer
  /** Called once training is set up (device chosen, resume done), e.g. to report where it starts. */
  onStart?: (info: StartInfo) => void
}

export interface StartInfo {
  device: DeviceInfo
  threads: ThreadSetup
  malloc: MallocInfo
  dataDir: string
  resumedFrom?: { name: string; cid: string; step: number }
  step: number
  epoch: number
}

export interface TrainSummary {
  device: DeviceInfo
  threads: ThreadSetup
  /** How malloc was set up for training (the addon's settings, or the environment's). */
  malloc: MallocInfo
  /** Steps this process trained, and the run's step count at the end. */
  steps: number
  step: number
  epochsCompleted: number
  samples: number
  seconds: number
  samplesPerSecond: number
  /** Test-set results after the last epoch trained (fashion-mnist, or --test-data). */
  test?: { loss: number; accuracy: number }
  resumedFrom?: { name: string; cid: string; step: number }
  checkpoints: { name: string; cid: string; step: number }[]
  /** True when a stop request ended the run early. */
  stopped: boolean
}

/** The longest training call, so that progress and checkpoint timing stay fine-grained. */
const STEP_CHUNK = 20

async function exists(path: string): Promise<boolean> {
  try {
    await withDeadline(access(path), path)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ETIMEDOUT') throw err
    return false
  }
}

/** Finds the idx files of a split: `root` itself or torchvision's `root/FashionMNIST/raw` layout. */
export async function fashionMnistDir(root: string, split: 'train' | 't10k' = 'train', flag = '--data'): Promise<string> {
  for (const dir of [root, join(root, 'FashionMNIST', 'raw'), join(root, 'fashion-mnist')]) {
    for (const f of [`${split}-images-idx3-ubyte`, `${split}-images-idx3-ubyte.gz`]) if (await exists(join(dir, f))) return dir
  }
  throw new Error(`no Fashion-MNIST files (${split}-images-idx3-ubyte[.gz]) in ${root} or ${join(root, 'FashionMNIST', 'raw')}; check ${flag}`)
}

/** A directory named by a flag, checked at start rather than when first read (after an epoch, for --test-data). */
async function checkDirectory(dir: string, flag: string): Promise<void> {
  const st = await withDeadline(stat(dir), dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ETIMEDOUT') throw err
    return undefined
  })
  if (!st?.isDirectory()) throw new Error(`${flag} ${dir}: ${st ? 'not a directory' : 'no such directory'}`)
}

async function dataSpecs(o: TrainOptions, dataDir: string): Promise<{ train: DataSpec; test?: DataSpec }> {
  if (o.testData !== undefined) await checkDirectory(o.testData, '--test-data')
  if (o.dataset !== 'fashion-mnist') {
    const image = { kind: o.dataset, imageSize: o.imageSize, channels: o.channels }
    return {
      train: { ...image, root: dataDir, ...(o.dataset === 'webdataset' ? { shards: o.shards } : {}) },
      test: o.testData === undefined ? undefined : { ...image, root: o.testData },
    }
  }
  const dir = await fashionMnistDir(dataDir)
  const testDir = o.testData === undefined ? dir : await fashionMnistDir(o.testData, 't10k', '--test-data')
  return { train: { kind: 'mnist', root: dir, split: 'train' }, test: { kind: 'mnist', root: testDir, split: 'test' } }
}

/** What the model takes and how its inputs are made, recorded with every checkpoint (checkpoint/meta.ts). */
function inputRecord(o: TrainOptions, d: DatasetInfo): InputRecord {
  const [channels, height, width] = d.shape
  return {
    dataset: o.dataset,
    channels,
    height,
    width,
    classes: d.classes,
    ...(d.classNames.length > 0 ? { classNames: d.classNames } : {}),
    ...(o.dataset === 'fashion-mnist' ? {} : { resize: 'bilinear' as const }),
    normalize: d.normalize,
  }
}

/**
 * The files the native dataset reads for `specs`, listed by the native code that reads them (the
 * shards a --shards pattern names, not every shard there), each listing under the deadline of a
 * possibly stalled mount.
 */
async function filesRead(specs: { train: DataSpec; test?: DataSpec }, evaluate: boolean): Promise<string[]> {
  const out: string[] = []
  for (const spec of evaluate && specs.test ? [specs.train, specs.test] : [specs.train]) {
    if (spec.kind === 'imagefolder') out.push(...(await withDeadline(listImageFolder(spec.root), spec.root)).samples.map((s) => s.path))
    else if (spec.kind === 'webdataset') out.push(...(await withDeadline(listWebDatasetShards(spec.root, spec.shards), spec.root)))
    else {
      const prefix = spec.split === 'train' ? 'train' : 't10k'
      for (const base of [`${prefix}-images-idx3-ubyte`, `${prefix}-labels-idx1-ubyte`]) {
        const gz = join(spec.root, `${base}.gz`)
        out.push((await exists(gz)) ? gz : join(spec.root, base))
      }
    }
  }
  return out.sort()
}

/** `o3://bucket/prefix/run` -> an O3 client scoped to it. */
function openRunClient(o: TrainOptions, logger: Logger): O3Client {
  return O3Client.open(o.ckpt!, { endpoint: o.endpoint, region: o.region, credentialsFile: o.credentialsFile, profile: o.profile, logger })
}

async function restore(o: TrainOptions, writer: CheckpointWriter | CheckpointStore): Promise<LoadedCheckpoint | undefined> {
  if (o.resume === 'none') {
    if (writer instanceof CheckpointWriter && writer.checkpoints.length > 0) {
      throw new OptionsError(`${o.ckpt} already has ${writer.checkpoints.length} checkpoints; use --resume auto to continue it, or a new --ckpt location`)
    }
    return undefined
  }
  const store = writer instanceof CheckpointWriter ? writer.store : writer
  const trust = TrustPolicy.fromFlags(o.trustSigner)
  return o.resume === 'auto' ? store.resume({ trust }) : store.load(o.resume, { trust })
}

/** Restores once per node: local rank 0 downloads and verifies, its node's other ranks read its copy. */
async function restoreOnNode(o: TrainOptions, reader: CheckpointWriter | CheckpointStore, share: NodeShare | undefined): Promise<LoadedCheckpoint | undefined> {
  if (!share) return restore(o, reader)
  if (share.leader) {
    const loaded = await restore(o, reader)
    if (loaded) share.write('restore.safetensors', loaded.file)
    share.publish('restore', loaded ? { name: loaded.entry.name } : null)
    return loaded
  }
  const found = await share.take<{ name: string } | null>('restore', 'the checkpoint to resume from')
  if (!found) return undefined
  // The copy only saves the download: it is checked against the run's own record, under this run's trust policy.
  const store = reader instanceof CheckpointWriter ? reader.store : reader
  return store.loadCopy(found.name, share.read('restore.safetensors'), { trust: TrustPolicy.fromFlags(o.trustSigner) })
}

/**
 * Makes a checkpoint fit this run's global batch: its data position means other samples under
 * another one, so that is refused unless the user asked to start its epoch over.
 */
function fitDataPosition(o: TrainOptions, loaded: LoadedCheckpoint, globalBatch: number): void {
  const saved = (loaded.meta.config as { globalBatch?: number; batch?: number } | undefined) ?? {}
  const savedGlobal = saved.globalBatch ?? saved.batch
  if (savedGlobal === undefined || savedGlobal === globalBatch) return
  if (!o.restartDataPosition) {
    throw new OptionsError(
      `${loaded.entry.name} was trained with a global batch of ${savedGlobal} (batch x ranks), this run has ${globalBatch}: ` +
        `use --batch ${savedGlobal / (globalBatch / o.batch)} with this many ranks, or --restart-data-position to start its epoch over`,
    )
  }
  const position = loaded.tensors.find((t) => t.name === 'loader.position')
  if (position) position.data.writeBigInt64LE(0n, 16)
}

/**
 * Tells the mount which files this rank reads in the rest of the epoch, in order, so that it
 * fetches them before they are opened. A hint only: nothing here may stop training.
 */
async function announceEpoch(trainer: Trainer, announcer: OrderAnnouncer, log: Logger): Promise<void> {
  try {
    announcer.announce(await trainer.filesAhead())
  } catch (err) {
    log.warn({ err: (err as Error).message }, 'the read order could not be computed; training goes on without announcing it')
  }
}

/**
 * Trains per `o` on the files in `dataDir`: resumes from the run's checkpoints, trains epoch by
 * epoch with checkpoints uploading in the background, evaluates after each epoch, and on a stop
 * request ends at a step boundary with a final checkpoint.
 */
export async function train(o: TrainOptions, dataDir: string, hooks: TrainHooks = {}): Promise<TrainSummary> {
  const log = hooks.logger ?? silentLogger
  const specs = await dataSpecs(o, dataDir)
  const threads = threadSetup(o.threads)
  const distributed = distributedFromEnv(process.env, o.distTimeout)
  // The files are listed first, so that a stalled mount fails the start within the deadline;
  // their CIDs are computed beside training (every checkpoint waits for them). A --test-data set
  // lies outside --data and the weights are not trained on it: it is not part of the lineage.
  const lineage: Promise<DataLineage> = dataLineage(dataDir, await filesRead(specs, o.evaluate && o.testData === undefined), hooks.readsVerified === true)
  lineage.catch(() => {})
  const trainer = await Trainer.create({
    model: o.model,
    modelConfig: o.modelOpt,
    distributed,
    lastBatch: o.lastBatch,
    device: o.device,
    seed: o.seed,
    threads: threads.threads,
    optimizer: { type: o.optimizer, lr: o.lr, momentum: o.momentum, weightDecay: o.weightDecay },
    data: specs.train,
    batchSize: o.batch,
    shuffleWindow: o.shuffleWindow,
  })
  // In a job every rank trains, evaluates and snapshots (those are collectives); rank 0 alone
  // writes checkpoints, shows progress, and commits a checkpoint only once every rank's part of it
  // (gathered by stateDict) is in hand.
  const leader = trainer.world.rank === 0
  const agreedStops = trainer.world.collectives
  let client: O3Client | undefined
  let writer: CheckpointWriter | undefined
  try {
    client = o.ckpt ? openRunClient(o, log) : undefined
    writer = client && leader ? await CheckpointWriter.open(client, { keepLast: o.keepLast, keepEvery: o.keepEvery || undefined, logger: log }) : undefined
    const reader = writer ?? (client ? new CheckpointStore(client, log) : undefined)
    const loaded = reader ? await restoreOnNode(o, reader, hooks.nodeShare) : undefined
    let step = 0
    if (loaded) {
      fitDataPosition(o, loaded, trainer.dataset.globalBatch)
      await trainer.loadStateDict(loaded.tensors)
      writer?.continueFrom(loaded.entry)
      step = loaded.meta.step
      log.info({ checkpoint: loaded.entry.name, cid: loaded.entry.cid, step, position: trainer.position }, 'resumed')
      // The checkpoint already descends from the --init weights: rerunning the same command continues the run.
      if (o.init) log.warn({ init: o.init, checkpoint: loaded.entry.name }, '--init ignored: resuming from a checkpoint')
    } else if (o.init) {
      const tensors = await applyInitWeights(trainer, o.init)
      log.info({ init: o.init, tensors }, 'model weights from --init')
    }
    const resumedFrom = loaded ? { name: loaded.entry.name, cid: loaded.entry.cid, step } : undefined
    hooks.onStart?.({ device: trainer.device, threads, malloc: trainer.malloc, dataDir, resumedFrom, step, epoch: trainer.position.epoch })

    const startStep = step
    let lastSavedStep = step
    const input = inputRecord(o, trainer.dataset)
    const config = {
      model: trainer.model,
      dataset: o.dataset,
      batch: o.batch,
      worldSize: trainer.world.worldSize,
      globalBatch: trainer.dataset.globalBatch,
      epochs: o.epochs,
      seed: o.seed,
      optimizer: o.optimizer,
      lr: o.lr,
      momentum: o.momentum,
      weightDecay: o.weightDecay,
    }
    /** Snapshots the state, then uploads it: in the background during training, in the foreground at the end. */
    const checkpoint = async (background: boolean) => {
      if (!client || step === lastSavedStep) return
      lastSavedStep = step
      const state = await trainer.stateDict()
      if (!writer) return
      const meta = {
        step,
        epoch: trainer.position.epoch,
        model: `${o.dataset}-${o.model}`,
        config,
        dataPosition: trainer.position,
        dataLineage: await lineage,
        input,
      }
      if (background) {
        await writer.saveAsync(state, meta, { signal: hooks.kill })
        log.info({ step, epoch: meta.epoch }, 'checkpoint upload started')
      } else {
        const done = await writer.save(state, meta, { signal: hooks.kill })
        log.info({ step, epoch: meta.epoch, cid: done.record.cid }, 'checkpoint saved')
      }
    }

    // A stop request ends the training call in flight after its current step.
    hooks.stop?.addEventListener('abort', () => trainer.stopAfterStep(), { once: true })
    let steps = 0
    let samples = 0
    let seconds = 0
    let test: TrainSummary['test']
    let stopped = false
    while (trainer.position.epoch < o.epochs) {
      if (stopped || (hooks.stop?.aborted && !agreedStops)) {
        stopped = true
        break
      }
      const epoch = trainer.position.epoch
      if (hooks.announcer) await announceEpoch(trainer, hooks.announcer, log)
      const bar: Progress | undefined = hooks.progress && leader ? createProgress(`epoch ${epoch + 1}/${o.epochs}`, { unit: 'samples' }) : undefined
      const epochStarted = Date.now()
      let epochSamples = 0
      let epochEnded = false
      while (!epochEnded) {
        // In a job a stop must be agreed by every rank: the trainer does that, and says so in r.stopped.
        if (hooks.stop?.aborted && !agreedStops) {
          stopped = true
          break
        }
        // Every rank checkpoints at the same steps (the snapshot is a collective), writer or not.
        const toCheckpoint = o.ckptEvery === 'epoch' || !client ? Infinity : o.ckptEvery - (step % o.ckptEvery)
        // The trainer ends the call at the epoch's last batch; it knows where that is.
        const r = await trainer.trainSteps(Math.min(toCheckpoint, STEP_CHUNK), {
          toEpochEnd: true,
          onProgress:
            bar &&
            ((p) =>
              bar.update({
                done: p.index === 0 ? p.total : p.index,
                total: p.total,
                fields: { loss: p.loss, 'samples/s': (epochSamples + p.samples) / ((Date.now() - epochStarted) / 1000) },
              })),
        })
        steps += r.steps
        step += r.steps
        samples += r.samples
        epochSamples += r.samples
        seconds += r.seconds
        epochEnded = r.epochEnded
        if (r.stopped) stopped = true
        if (o.ckptEvery !== 'epoch' && step % o.ckptEvery === 0) await checkpoint(true)
        if (stopped) break
      }
      if (specs.test && o.evaluate && !stopped) {
        const e = await trainer.evaluate(specs.test)
        test = { loss: e.loss, accuracy: e.accuracy }
      }
      bar?.stop({ ...(test ? { 'test acc': `${(test.accuracy * 100).toFixed(2)}%` } : {}) })
      if (leader)
        log.info({ epoch: epoch + 1, seconds: (Date.now() - epochStarted) / 1000, samples: epochSamples, ...test }, stopped ? 'stopped' : 'epoch done')
      if (!stopped && o.ckptEvery === 'epoch') await checkpoint(true)
    }
    await writer?.flush()
    // A stop request, or a run whose last steps fell between checkpoints: save where it ended.
    if (stopped || (o.ckptEvery !== 'epoch' && step !== lastSavedStep)) await checkpoint(false)
    return {
      device: trainer.device,
      threads,
      malloc: trainer.malloc,
      steps,
      step,
      epochsCompleted: trainer.position.epoch,
      samples,
      seconds,
      samplesPerSecond: seconds > 0 ? samples / seconds : 0,
      test,
      resumedFrom,
      checkpoints: (writer?.checkpoints ?? []).filter((e) => e.step > startStep).map((e) => ({ name: e.name, cid: e.cid, step: e.step })),
      stopped,
    }
  } finally {
    trainer.close()
    // Training failed with a checkpoint still uploading: let it commit (or abort cleanly) before
    // the client closes under it, unless the caller asked to give up at once.
    if (writer && !hooks.kill?.aborted) await writer.flush().catch((err: Error) => log.error({ err: err.message }, 'the checkpoint in flight failed'))
    client?.close()
  }
}
