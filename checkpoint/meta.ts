import { O3IntegrityError } from '../lib/o3/errors.js'
import { checkLineage, type DataLineage } from '../lib/content/lineage.js'

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
}

/** safetensors metadata holds strings only: numbers as decimal text, structures as JSON. */
export function encodeMeta(meta: CheckpointMeta): Record<string, string> {
  const out: Record<string, string> = { format: 'pt', step: String(meta.step), epoch: String(meta.epoch), model: meta.model }
  if (meta.config !== undefined) out.config = JSON.stringify(meta.config)
  if (meta.dataPosition !== undefined) out.data_position = JSON.stringify(meta.dataPosition)
  if (meta.dataLineage !== undefined) out.data_lineage = JSON.stringify(meta.dataLineage)
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
  const lineage = json('data_lineage')
  return {
    step: int('step'),
    epoch: int('epoch'),
    model: md.model ?? '',
    config: json('config'),
    dataPosition: json('data_position'),
    dataLineage: lineage === undefined ? undefined : checkLineage(lineage, what),
  }
}
