// A small ImageFolder tree of real images: Fashion-MNIST test images written as PNG and JPEG with
// /usr/bin/python3 + PIL (python3-pil, which python3-torchvision depends on), one directory per
// class. Used by the native trainer's tests and by torchvision over the mount.
import { execFileSync } from 'node:child_process'
import path from 'node:path'

export const FASHION_MNIST = '/usr/share/datasets/fashion-mnist'

/** Fashion-MNIST's class names as directory names; label i of the dataset is CLASS_DIRS[i]. */
export const CLASS_DIRS = ['tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot']

export interface ImageFolderOptions {
  /** Fashion-MNIST labels to include (default: all ten). */
  labels?: number[]
  /** Images per class (default 6), taken in order from the test set. */
  perClass?: number
  /** Side of the written images (default 28, the original; others are resized by PIL). */
  size?: number
}

export interface ImageFolderFile {
  path: string
  /** Index of the class directory in sorted order: the label torchvision's ImageFolder gives. */
  label: number
  /** The image's Fashion-MNIST label. */
  sourceLabel: number
  format: 'png' | 'jpeg'
}

export interface ImageFolderTree {
  root: string
  /** Class directory names, sorted (index = label). */
  classes: string[]
  /** Every file written, sorted by path. */
  files: ImageFolderFile[]
}

// Alternates PNG and JPEG, and grayscale and RGB, so both decoders and both colour paths are used.
const WRITER = `
import gzip, json, os, sys
from PIL import Image
src, root, labels, per_class, size = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dirs = json.loads(sys.argv[6])
with gzip.open(os.path.join(src, 't10k-images-idx3-ubyte.gz')) as f: images = f.read()[16:]
with gzip.open(os.path.join(src, 't10k-labels-idx1-ubyte.gz')) as f: all_labels = f.read()[8:]
out, counts = [], {l: 0 for l in labels}
for i, l in enumerate(all_labels):
    if l not in counts or counts[l] >= per_class: continue
    n = counts[l]; counts[l] += 1
    img = Image.frombytes('L', (28, 28), images[i * 784:(i + 1) * 784])
    if n % 4 >= 2: img = img.convert('RGB')
    if size != 28: img = img.resize((size, size), Image.BILINEAR)
    fmt = 'png' if n % 2 == 0 else 'jpeg'
    d = os.path.join(root, dirs[l]); os.makedirs(d, exist_ok=True)
    p = os.path.join(d, f'{i:05d}.' + ('png' if fmt == 'png' else 'jpg'))
    img.save(p, quality=95) if fmt == 'jpeg' else img.save(p)
    out.append({'path': p, 'sourceLabel': l, 'format': fmt})
    if all(c >= per_class for c in counts.values()): break
print(json.dumps(out))
`

/** Writes the tree under `root` (created if needed) and returns its files and labels. */
export function buildImageFolder(root: string, opts: ImageFolderOptions = {}): ImageFolderTree {
  const labels = opts.labels ?? CLASS_DIRS.map((_, i) => i)
  const args = ['-c', WRITER, FASHION_MNIST, root, JSON.stringify(labels), String(opts.perClass ?? 6), String(opts.size ?? 28), JSON.stringify(CLASS_DIRS)]
  const written = JSON.parse(execFileSync('/usr/bin/python3', args, { encoding: 'utf8' })) as Omit<ImageFolderFile, 'label'>[]
  const classes = labels.map((l) => CLASS_DIRS[l]).sort()
  const files = written
    .map((f) => ({ ...f, label: classes.indexOf(CLASS_DIRS[f.sourceLabel]) }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
  return { root: path.resolve(root), classes, files }
}

const GRAY_TREE_WRITER = `
import gzip, os, sys
from PIL import Image
src, split, root, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with gzip.open(os.path.join(src, f'{split}-images-idx3-ubyte.gz')) as f: images = f.read()[16:]
with gzip.open(os.path.join(src, f'{split}-labels-idx1-ubyte.gz')) as f: labels = f.read()[8:]
for i in range(n):
    d = os.path.join(root, str(labels[i])); os.makedirs(d, exist_ok=True)
    Image.frombytes('L', (28, 28), images[i * 784:(i + 1) * 784]).save(os.path.join(d, f'{i:05d}.png'))
`

/**
 * Writes the first `count` images of a Fashion-MNIST split (`train` or `t10k`) as gray PNGs (PIL)
 * under root/<label>/<index>.png. The directories "0".."9" sort in label order, so the tree's
 * labels are the idx files' labels, and each PNG decodes to its idx image's bytes.
 */
export function writeGrayPngTree(root: string, split: 'train' | 't10k', count: number): string {
  execFileSync('/usr/bin/python3', ['-c', GRAY_TREE_WRITER, FASHION_MNIST, split, root, String(count)])
  return path.resolve(root)
}
