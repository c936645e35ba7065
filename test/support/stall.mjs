/**
 * A test-only preload (NODE_OPTIONS="--import …") that makes a Harmony node
 * busy on request: once the file named by HARMONY_TEST_STALL exists, the node
 * deletes it and blocks its event loop for HARMONY_TEST_STALL_MS (default
 * 3000). The test knows the node is stalled once the file is gone. Only the
 * process running Harmony's entry point stalls, not a launcher in front of it.
 */
import { existsSync, rmSync } from "node:fs"

const marker = process.env.HARMONY_TEST_STALL
const entry = process.argv[1] ?? ""
if (marker !== undefined && /(main\.ts|harmony\.mjs)$/.test(entry)) {
  const stallMs = Number(process.env.HARMONY_TEST_STALL_MS ?? "3000")
  setInterval(() => {
    if (!existsSync(marker)) return
    rmSync(marker)
    const until = Date.now() + stallMs
    while (Date.now() < until) {
      // busy: the event loop runs nothing else meanwhile
    }
  }, 10).unref()
}
