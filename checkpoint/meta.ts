import { O3IntegrityError } from '../lib/o3/errors.js'
import type { DataLineage } from '../lib/content/lineage.js'

/**
 * What the model takes and how the trainer made it from the data, so that other code
 * (examples/pytorch/evaluate.py) can build the model and prepare a test set exactly alike.
 */
export interface InputRecord {
  /** The layout the trainer read: idx files, an ImageFolder tree or WebDataset shards. */
  dataset: 'fashion-mnist' | 'imagefolder' | 'webdataset'
  channels: number
  height: number
  width: number
  classes: number
  /** imagefolder: the class directory of each label (sorted names). */
  classNames?: string[]
  /**
   * imagefolder, webdataset: each image is decoded to `channels` (PNG by libpng's simplified API,
   * JPEG by libjpeg; gray replicated to RGB, colour to luminance), then resized to height x width
   * by bilinear interpolation with half-pixel centres in float32, rounded to bytes. Idx images
   * are used as they are.
   */
  resize?: 'bilinear'
  /** The model's input from a sample's bytes, in float32: byte * mul - sub. */
  normalize: { mul: number; sub: number }
}

/** What a trainer records with a checkpoint to resume exactly where it stopped. */
export interface CheckpointMeta {
  step: number
  epoch: number
  /** The model's name, e.g. `fashion-cnn`. */
  model: string
  /** The model and training configuration; any JSON value. */
  config?: unknown
  /** Where in the data the next batch comes from (epoch, batch index, sampler seed…); any JSON value. */
  dataPosition?: unknown
  /** The data the weights were trained on (lib/content/lineage.ts). */
  dataLineage?: DataLineage
  /** What the model takes, for evaluating it elsewhere. */
  input?: InputRecord
}

/** safetensors metadata holds strings only: numbers as decimal text, structures as JSON. */
export function encodeMeta(meta: CheckpointMeta): Record<string, string> {
  const out: Record<string, string> = { format: 'pt', step: String(meta.step), epoch: String(meta.epoch), model: meta.model }
  if (meta.config !== undefined) out.config = JSON.stringify(meta.config)
  if (meta.dataPosition !== undefined) out.data_position = JSON.stringify(meta.dataPosition)
  if (meta.dataLineage !== undefined) out.data_lineage = JSON.stringify(meta.dataLineage)
  if (meta.input !== undefined) out.input = JSON.stringify(meta.input)
  return out
}

export function decodeMeta(md: Record<string, string>, what: string): CheckpointMeta {
  const int = (k: string): number => {
    const n = Number(md[k])
    if (md[k] === undefined || !Number.isSafeInteger(n)) throw new O3IntegrityError(`${what}: metadata ${k}=${JSON.stringify(md[k])} is not an integer`)
    return n
  }
  const json = (k: string): unknown => {
    if (md[k] === undefined) return undefined
    try {
      return JSON.parse(md[k])
    } catch {
      throw new O3IntegrityError(`${what}: metadata ${k} is not JSON`)
    }
  }
  return {
    step: int('step'),
    epoch: int('epoch'),
    model: md.model ?? '',
    config: json('config'),
    dataPosition: json('data_position'),
    dataLineage: json('data_lineage') as DataLineage | undefined,
    input: json('input') as InputRecord | undefined,
  }
}
