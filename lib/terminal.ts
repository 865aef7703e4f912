/**
 * The progress bar on the terminal now, if any, so that log lines and error messages are printed
 * above it instead of into it: a bar is a line redrawn in place, and text written after it would
 * land on that line and be overwritten by the next redraw.
 */
export interface ShownBar {
  stream: NodeJS.WritableStream
  /** Draws the bar again on the current (empty) line. */
  redraw(): void
  /** Leaves the bar as it is on its own line and gives the terminal back (cursor shown). */
  end(): void
}

let shown: ShownBar | undefined

/** Called by a bar when it appears and when it is gone. */
export function setShownBar(bar: ShownBar | undefined): void {
  shown = bar
}

/**
 * Writes `text` (whole lines) to `stream`, above the bar shown there: the bar's line is cleared,
 * the text written, the cursor position saved (ESC 7) where the bar now starts, and the bar drawn
 * again. cli-progress saved the position where the bar started and returns there when it stops:
 * left as it was, that would be a line of the text, and what follows the bar would overwrite it.
 */
export function printAboveBar(stream: NodeJS.WritableStream, text: string): void {
  if (shown?.stream !== stream) {
    stream.write(text)
    return
  }
  stream.write(`\r\x1b[2K${text}\x1b7`)
  shown.redraw()
}

// A process that exits with a bar up (an error, a second signal) leaves it on its own line and the cursor visible.
process.on('exit', () => shown?.end())
