/**
 * The native libtorch trainer, typed. Every call that can take time runs on native threads and
 * returns a promise; the event loop stays free while a model trains.
 *
 * The addon is `build/Release/o3_trainer.node` (built by `scripts/build-addon`, which
 * `scripts/setup` runs), or the file named by `O3_TRAINER_ADDON`.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import { projectRoot } from '../lib/paths.js'
import type { DType, StateTensor } from '../lib/state-tensor.js'

export type ModelName = 'mlp' | 'cnn' | 'resnet'

/** (Fashion-)MNIST idx files in `root` (gzipped or not): `train-*` or `t10k-*`. */
export interface MnistData {
  kind: 'mnist'
  root: string
  split: 'train' | 'test'
}

/** `root/<class>/**.{jpg,jpeg,png}`; labels are class indices in sorted directory order. */
export interface ImageFolderData {
  kind: 'imagefolder'
  root: string
  /** Images are decoded and resized (bilinear) to imageSize x imageSize. Default 64. */
  imageSize?: number
  /** 3 (default): RGB, grayscale expanded. 1: gray, the same tensor an idx file gives for the same image. */
  channels?: 1 | 3
}

/**
 * WebDataset tar shards in `root`: samples are `<key>.png|jpg|jpeg` + `<key>.cls` (the class index
 * as text). Shards are read sequentially and kept whole per rank; see shuffleWindow.
 */
export interface WebDatasetData extends Omit<ImageFolderData, 'kind'> {
  kind: 'webdataset'
  /** Shard names under root, with brace ranges: `train-{000000..000127}.tar`. Default: every `*.tar`. */
  shards?: string
}

export type DataSpec = MnistData | ImageFolderData | WebDatasetData

export interface OptimizerOptions {
  type: 'sgd' | 'adam'
  lr: number
  /** SGD only. */
  momentum?: number
  weightDecay?: number
}

export interface TrainerOptions {
  model: ModelName
  /**
   * Hyperparameters; missing ones take defaults. mlp: hidden 256, layers 2, dropout 0.2;
   * cnn: channels 32, hidden 128, dropout 0.25; resnet: width 16, blocks 1 (per stage, 3 stages).
   */
  modelConfig?: Record<string, number>
  /** 'auto' (default) picks CUDA when this libtorch has it and a GPU is visible. */
  device?: 'auto' | 'cpu' | 'cuda'
  /** Seeds parameter initialisation, dropout and the shuffle order. Default 0. */
  seed?: number
  /** torch intra-op threads. Process-wide: the last trainer created sets it. 0: torch's default. */
  threads?: number
  optimizer: OptimizerOptions
  data: DataSpec
  batchSize: number
  /** Shuffle each epoch (seeded by seed and epoch). Default true. */
  shuffle?: boolean
  /**
   * webdataset: the epoch visits this rank's shards in a seeded order and shuffles each window of
   * this many consecutive samples. Default 1000.
   */
  shuffleWindow?: number
  /**
   * This process's share of each epoch without any communication: global step k covers samples
   * [k*G, (k+1)*G) of the epoch's order (G = batchSize x worldSize) and rank r takes its batchSize
   * slice of them. Ignored when `distributed` is given.
   */
  rank?: number
  worldSize?: number
  /** Join a data-parallel job (see trainer/distributed.ts for reading torchrun's environment). */
  distributed?: DistributedOptions
  /**
   * The last, incomplete global batch of an epoch: trained short (default for one process),
   * dropped (default with `distributed`), or padded with the epoch's first samples.
   */
  lastBatch?: 'short' | 'drop' | 'pad'
  /** Steps between progress reports, each of which reads the loss (a GPU sync). Default 10. */
  progressEvery?: number
  /** Batches assembled ahead of training. Default 4. */
  prefetch?: number
  /** Threads reading and decoding samples. Default 2. */
  workers?: number
}

/** Where this process stands in a job, as torchrun describes it. */
export interface DistributedOptions {
  rank: number
  worldSize: number
  localRank: number
  masterAddr: string
  masterPort: number
  /** Keys of each restart attempt live under their own prefix in the store. */
  restartCount?: number
  /** torchrun's agent hosts the TCPStore; otherwise rank 0 does. */
  useAgentStore?: boolean
  /** Network interface for Gloo; default: loopback for a loopback master, else the host's address. */
  socketIfname?: string
  /** A collective or rendezvous that takes longer fails the rank. Default 300. */
  timeoutSeconds?: number
}

export type { DType, StateTensor }

export interface Position {
  epoch: number
  /** Samples of this rank's share of the epoch already trained on. */
  index: number
}

export interface Progress extends Position {
  /** Steps and samples done so far in this call. */
  step: number
  samples: number
  /** Mean loss of the step's batch (this rank's share of it). */
  loss: number
  /** Samples per epoch for this rank. */
  total: number
}

export interface TrainCallOptions {
  /** Called on the JS thread after every step. An exception it throws rejects the call when it ends. */
  onProgress?: (p: Progress) => void
}

export interface TrainStepsOptions extends TrainCallOptions {
  /** End the call early after the last batch of the current epoch (see TrainResult.epochEnded). */
  toEpochEnd?: boolean
}

export interface TrainResult {
  /** Mean loss over the samples of this call. */
  loss: number
  steps: number
  samples: number
  seconds: number
  /** The call's last step trained the last batch of its epoch. */
  epochEnded: boolean
  /** The epoch of the call's last step (the one that ended, if epochEnded); the current one if no step ran. */
  epoch: number
  /** Of which in gradient all-reduces. */
  commSeconds: number
  /** Ended early by stopAfterStep() (agreed by every rank of a job) or close(). */
  stopped: boolean
}

export interface EvalResult {
  loss: number
  accuracy: number
  samples: number
}

export interface DeviceInfo {
  type: 'cpu' | 'cuda'
  /** The GPU's name, or the CPU model. */
  name: string
}

/** The model as built, every hyperparameter filled in: what checkpoint metadata records. */
export interface ModelInfo {
  name: ModelName
  config: Record<string, number>
}

export interface DatasetInfo {
  size: number
  /** Samples this rank visits per epoch. */
  epochSize: number
  stepsPerEpoch: number
  /** Batch size x world size: a data position (epoch, global step) means the same samples for any world with this global batch. */
  globalBatch: number
  classes: number
  /** Channels, height, width of one sample. */
  shape: [number, number, number]
  /** The class of each label where the data names them (an ImageFolder's sorted directories); else empty. */
  classNames: string[]
  /** How a sample's bytes become the model's input, in float32: byte * mul - sub. */
  normalize: { mul: number; sub: number }
}

export interface ImageFolderListing {
  classes: string[]
  samples: { path: string; label: number }[]
}

/** The addon could not be loaded; the message says how to fix it. */
export class AddonLoadError extends CliError {
  constructor(message: string) {
    super(message, ExitCode.addon)
  }
}

/**
 * How malloc was set up for training, once per process (cpp/malloc_tuning.h): by the addon
 * (`setBy: 'o3'`, with the thresholds in bytes), or left to the environment variable the user set
 * (its name), or to a libc other than glibc ('libc').
 */
export interface MallocInfo {
  setBy: string
  mmapThreshold?: number
  trimThreshold?: number
}

export interface WorldInfo {
  rank: number
  worldSize: number
  localRank: number
  /** True when joined to a job's other ranks. */
  collectives: boolean
}

interface NativeTrainer {
  info(): { device: DeviceInfo; model: ModelInfo; dataset: DatasetInfo; world: WorldInfo; malloc: MallocInfo }
  position(): Position
  /** The paths joined by NUL. */
  filesAhead(): Promise<string>
  /** maxSteps < 0: no step limit (toEpochEnd must be set). */
  train(maxSteps: number, toEpochEnd: boolean, onProgress?: (p: Progress) => void): Promise<TrainResult>
  evaluate(data: DataSpec, batchSize: number): Promise<EvalResult>
  stateDict(): Promise<StateTensor[]>
  loadStateDict(state: StateTensor[]): Promise<void>
  stopAfterStep(): void
  destroy(): void
}

interface NativeAddon {
  createTrainer(options: TrainerOptions): Promise<NativeTrainer>
  listImageFolder(root: string): Promise<ImageFolderListing>
  decodeSample(bytes: Uint8Array, channels: number, size: number): Promise<Buffer>
  listWebDatasetShards(root: string, pattern: string): Promise<string[]>
}

const ADDON_FILE = 'o3_trainer.node'

/** Where the addon is loaded from: `O3_TRAINER_ADDON`, else the cmake-js build in the project. */
export function addonPath(): string {
  return process.env.O3_TRAINER_ADDON ?? path.join(projectRoot(), 'build', 'Release', ADDON_FILE)
}

const REBUILD = 'run scripts/setup (or npm run build:addon)'

/** Turns a failed load of `file` into one line that says what is wrong and how to fix it. */
function explainLoadError(file: string, err: unknown): string {
  const message = err instanceof Error ? err.message : String(err)
  const firstLine = message.split('\n')[0]
  if (!existsSync(file)) return `trainer addon not built (${file} is missing): ${REBUILD}`
  const missingLib = /([^\s:]+\.so[.\d]*): cannot open shared object file/.exec(message)
  if (missingLib) {
    const what = /torch|c10/.test(missingLib[1]) ? 'libtorch not found' : `a library the addon needs is missing`
    return `${what} (${missingLib[1]}) loading ${file}: ${REBUILD}; for another libtorch set LIBTORCH ` + `to an unpacked libtorch and run scripts/build-addon`
  }
  if (/undefined symbol|version `[^']+' not found/.test(message)) {
    return (
      `the libtorch found at run time does not match the one ${file} was built against (${firstLine.trim()}): ` +
      `rebuild with npm run build:addon, or remove the other libtorch from LD_LIBRARY_PATH`
    )
  }
  if (/NODE_MODULE_VERSION|did not self-register|wrong ELF class|invalid ELF header/.test(message)) {
    return `${file} was built for another Node.js or platform (${firstLine.trim()}): ${REBUILD}`
  }
  return `cannot load the trainer addon ${file}: ${firstLine.trim()}`
}

let addon: NativeAddon | undefined

/**
 * Read by libgomp and OpenBLAS when libtorch loads, so set (where the user has not) before the
 * addon loads. torch runs its own intra-op threads: OpenBLAS adding its own per call
 * oversubscribes the cores, and OpenMP threads spin-waiting between parallel regions take the
 * cores the loader threads need, which made CPU training speed bimodal on small machines.
 */
export const THREAD_ENV_DEFAULTS = { OMP_WAIT_POLICY: 'PASSIVE', OPENBLAS_NUM_THREADS: '1' } as const

/** Loads the addon once; throws AddonLoadError with a one-line fix when it cannot. */
export function loadAddon(): NativeAddon {
  if (addon) return addon
  for (const [k, v] of Object.entries(THREAD_ENV_DEFAULTS)) process.env[k] ??= v
  const file = addonPath()
  try {
    addon = createRequire(import.meta.url)(file) as NativeAddon
  } catch (err) {
    throw new AddonLoadError(explainLoadError(file, err))
  }
  return addon
}

/** The files and labels an ImageFolder dataset at `root` holds, in the loader's order. */
export function listImageFolder(root: string): Promise<ImageFolderListing> {
  return loadAddon().listImageFolder(root)
}

/**
 * The sample (channels x size x size bytes, CHW) an encoded JPEG or PNG becomes in the image
 * loaders: decoded, resized and laid out by their one path, for checking other implementations.
 */
export function decodeSample(bytes: Uint8Array, channels: 1 | 3, size: number): Promise<Buffer> {
  return loadAddon().decodeSample(bytes, channels, size)
}

/** The shard files a WebDataset in `root` reads, in order: those `pattern` names, or every `*.tar` in `root`. */
export function listWebDatasetShards(root: string, pattern = ''): Promise<string[]> {
  return loadAddon().listWebDatasetShards(root, pattern)
}

/** A model, its optimizer and its data loader on one device. */
export class Trainer {
  readonly device: DeviceInfo
  readonly model: ModelInfo
  readonly dataset: DatasetInfo
  readonly world: WorldInfo
  readonly malloc: MallocInfo
  #native: NativeTrainer | undefined
  /** Calls run one after another, in the order made. */
  #tail: Promise<unknown> = Promise.resolve()

  private constructor(native: NativeTrainer) {
    this.#native = native
    const info = native.info()
    this.device = info.device
    this.model = info.model
    this.dataset = info.dataset
    this.world = info.world
    this.malloc = info.malloc
  }

  /** Opens the data and builds the model (both off the JS thread). Rejects on bad options or data. */
  static async create(options: TrainerOptions): Promise<Trainer> {
    return new Trainer(await loadAddon().createTrainer(options))
  }

  /** Where the loader stands; updated after every step, also while training runs. */
  get position(): Position {
    return this.#live().position()
  }

  /**
   * The files this rank reads from its position to the end of that epoch, each once in the order of
   * its first read (ImageFolder images, WebDataset shards), relative to the data's root; none for idx
   * data. Computed off the JS thread; what o3train announces to the mount at each epoch's start.
   */
  filesAhead(): Promise<string[]> {
    return this.#enqueue(async () => {
      const joined = await this.#live().filesAhead()
      return joined === '' ? [] : joined.split('\0')
    })
  }

  /** Trains to the end of the current epoch (all of it when at its start). */
  trainEpoch(options: TrainCallOptions = {}): Promise<TrainResult> {
    return this.#train(-1, true, options)
  }

  /** Trains n batches, continuing into the next epoch as needed unless `toEpochEnd`. */
  trainSteps(n: number, { toEpochEnd = false, ...options }: TrainStepsOptions = {}): Promise<TrainResult> {
    if (!Number.isInteger(n) || n < 0) return Promise.reject(new RangeError('n must be a non-negative integer'))
    return this.#train(n, toEpochEnd, options)
  }

  /** Loss and accuracy over the whole dataset (eval mode, in order); leaves training state alone. */
  evaluate(data: DataSpec, batchSize = 1000): Promise<EvalResult> {
    return this.#enqueue(() => this.#live().evaluate(data, batchSize))
  }

  /**
   * The whole training state (see StateTensor for names): a snapshot, each buffer over a private
   * native copy (not copied again into the JS heap).
   */
  stateDict(): Promise<StateTensor[]> {
    return this.#enqueue(() => this.#live().stateDict())
  }

  /**
   * Restores a stateDict(); names, dtypes and shapes are all checked before anything changes.
   * Do not modify the buffers until the promise settles.
   */
  loadStateDict(state: StateTensor[]): Promise<void> {
    return this.#enqueue(() => this.#live().loadStateDict(state))
  }

  /**
   * Makes the running (or next) training call return after its current step (in a job: after a
   * step every rank agrees on, within progressEvery steps); later calls run normally.
   */
  stopAfterStep(): void {
    this.#native?.stopAfterStep()
  }

  /** Frees the native trainer. A running call ends after its current step; queued calls reject. */
  close(): void {
    this.#native?.destroy()
    this.#native = undefined
  }

  #live(): NativeTrainer {
    if (!this.#native) throw new Error('trainer is closed')
    return this.#native
  }

  #enqueue<T>(op: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(op)
    this.#tail = result.catch(() => undefined)
    return result
  }

  #train(maxSteps: number, toEpochEnd: boolean, { onProgress }: TrainCallOptions): Promise<TrainResult> {
    return this.#enqueue(async () => {
      let callbackError: unknown
      let failed = false
      const report = onProgress
        ? (p: Progress) => {
            try {
              onProgress(p)
            } catch (err) {
              if (!failed) [failed, callbackError] = [true, err]
            }
          }
        : undefined
      const result = await this.#live().train(maxSteps, toEpochEnd, report)
      if (failed) throw callbackError
      return result
    })
  }
}
