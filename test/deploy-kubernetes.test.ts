// The PyTorchJob's command must be one o3train's real option parser accepts.
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse } from 'yaml'
import { parseTrainArgs } from '../trainer/options.js'

interface Container {
  name: string
  command: string[]
  envFrom?: { secretRef?: { name: string } }[]
  volumeMounts?: { mountPath: string }[]
}

const job = parse(readFileSync('deploy/kubernetes/pytorchjob.yaml', 'utf8')) as {
  kind: string
  spec: { pytorchReplicaSpecs: Record<string, { template: { spec: { containers: Container[] } } }> }
}

t.equal(job.kind, 'PyTorchJob')
for (const [role, spec] of Object.entries(job.spec.pytorchReplicaSpecs)) {
  t.test(role, async (t) => {
    const c = spec.template.spec.containers.find((x) => x.name === 'pytorch')
    t.ok(c, 'a container named pytorch (the one Kubeflow gives MASTER_ADDR and RANK)')
    const cmd = c!.command
    t.equal(cmd[0], 'torchrun')
    const at = cmd.indexOf('--no_python')
    t.ok(at > 0, 'torchrun runs o3train itself (--no_python)')
    t.equal(cmd[at + 1], 'o3train')
    const o = parseTrainArgs(cmd.slice(at + 2))
    t.match(o.data, /^o3:\/\//)
    t.match(o.ckpt, /^o3:\/\//)
    t.ok(
      c!.envFrom?.some((e) => e.secretRef),
      'O3 keys from a Secret, never argv',
    )
    t.ok(
      c!.volumeMounts?.some((v) => v.mountPath === '/dev/fuse'),
      '/dev/fuse for the mount',
    )
  })
}
