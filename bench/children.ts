/**
 * The bench's child processes: servers and load generators started with a
 * log file each, stopped with SIGTERM (SIGKILL after 30 s), all killed when
 * the bench exits. Shared by bench/run.ts and bench/connections.ts.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { createWriteStream, existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { sleep } from "./common.ts"

export const repoRoot = fileURLToPath(new URL("../", import.meta.url))
export const resultsDir = join(repoRoot, "bench", "results")
const localNode = join(repoRoot, "node_modules", ".bin", "node")
export const nodeBin = existsSync(localNode) ? localNode : process.execPath

export interface Child {
  readonly pid: number
  readonly process: ChildProcess
  exited: boolean
  readonly exit: Promise<void>
  readonly logFile: string
}

export const children = new Set<ChildProcess>()
/** Undone on the way out, even when interrupted: databases, tables, the private broker. */
export const pendingCleanups = new Set<() => Promise<void>>()
export const killChildren = () => {
  for (const child of children) {
    for (const pid of [-(child.pid ?? 0), child.pid ?? 0]) {
      try {
        if (pid !== 0) process.kill(pid, "SIGKILL")
      } catch {
        // gone already, or not a group leader
      }
    }
  }
}

/** Starts `node ...args` in its own process group, stdout and stderr to `logFile`. */
export const spawnNode = (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  cwd: string,
  logFile: string
): Child => {
  const log = createWriteStream(logFile)
  const child = spawn(nodeBin, args, { cwd, env, detached: true, stdio: ["ignore", "pipe", "pipe"] })
  children.add(child)
  child.stdout!.pipe(log)
  child.stderr!.pipe(log)
  const handle: Child = {
    pid: child.pid!,
    process: child,
    exited: false,
    logFile,
    exit: new Promise((resolve) =>
      child.on("exit", () => {
        handle.exited = true
        children.delete(child)
        resolve()
      })
    )
  }
  return handle
}

export const stopChild = async (child: Child) => {
  if (!child.exited) {
    child.process.kill("SIGTERM")
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid, "SIGKILL")
      } catch {
        // gone
      }
    }, 30_000)
    await child.exit
    clearTimeout(timer)
  }
}

export const tail = (file: string, lines = 30) => {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n")
  } catch {
    return "(no log)"
  }
}

/** The first ERROR line of a server log, for a one-line warning. */
export const firstError = (file: string) =>
  tail(file, 400)
    .split("\n")
    .find((line) => line.includes("ERROR"))
    ?.slice(0, 300) ?? "(no ERROR line in its log)"

export const waitReady = async (child: Child, url: string, timeoutSeconds: number) => {
  const deadline = Date.now() + timeoutSeconds * 1000
  let problem = "no answer"
  while (Date.now() < deadline) {
    if (child.exited) throw new Error(`server exited before it was ready; log tail:\n${tail(child.logFile)}`)
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(5_000) })
      if (response.status === 200) return
      problem = `${response.status} ${(await response.text()).slice(0, 200)}`
    } catch (error) {
      problem = String(error)
    }
    await sleep(300)
  }
  throw new Error(`server not ready after ${timeoutSeconds} s (${problem}); log tail:\n${tail(child.logFile)}`)
}
