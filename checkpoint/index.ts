export { CheckpointWriter, type WriterOptions, type SavedCheckpoint, type CommitStep, type PutFile, type PutRequest } from './writer.js'
export { CheckpointStore, type FileSink, type LoadedCheckpoint, type ReadOptions, type VerifyResult } from './store.js'
export { type CheckpointMeta } from './meta.js'
export { type StateTensor, type DType, type SafetensorsHeader, encodeHeader, parseHeader, parseSafetensors } from './safetensors.js'
export {
  type CheckpointRecord,
  type EntryKind,
  type Manifest,
  type ManifestEntry,
  type LatestPointer,
  checkpointName,
  contentKey,
  dataKey,
  directoryFileKey,
  entryPrefix,
  recordKey,
  sidecarKey,
} from './records.js'
export { TrustPolicy, TRUSTED_SIGNERS_ENV } from './trust.js'
