/**
 * CPU accounting from /proc (Linux): CPU seconds used by named groups of
 * processes (each pid counts with its descendants) and by the whole machine,
 * so a result says where the 2 cores went — and how busy other work kept them.
 */
import { readdirSync, readFileSync } from "node:fs"
import { cpus } from "node:os"
import type { CpuUsage } from "./common.ts"

const ticksPerSecond = 100 // USER_HZ on Linux

interface ProcStat {
  readonly ppid: number
  readonly ticks: number
}

const readStat = (pid: number): ProcStat | undefined => {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8")
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ")
    // fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) }
  } catch {
    return undefined
  }
}

/** Every live pid with its parent and CPU ticks. */
const allStats = (): Map<number, ProcStat> => {
  const stats = new Map<number, ProcStat>()
  let entries: Array<string> = []
  try {
    entries = readdirSync("/proc")
  } catch {
    return stats
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    const stat = readStat(Number(entry))
    if (stat !== undefined) stats.set(Number(entry), stat)
  }
  return stats
}

const machineBusyTicks = (): number => {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!
    const values = line.trim().split(/\s+/).slice(1).map(Number)
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    const total = values.reduce((sum, value) => sum + value, 0)
    return total - (values[3] ?? 0) - (values[4] ?? 0)
  } catch {
    return 0
  }
}

export interface CpuSnapshot {
  readonly at: number
  readonly groups: Record<string, number>
  readonly machine: number
}

/** Ticks per group: each root pid and all of its descendants (e.g. Postgres backends). */
export const snapshot = (groups: Readonly<Record<string, ReadonlyArray<number>>>): CpuSnapshot => {
  const stats = allStats()
  const children = new Map<number, Array<number>>()
  for (const [pid, stat] of stats) {
    const list = children.get(stat.ppid)
    if (list === undefined) children.set(stat.ppid, [pid])
    else list.push(pid)
  }
  const result: Record<string, number> = {}
  for (const [name, roots] of Object.entries(groups)) {
    let ticks = 0
    const seen = new Set<number>()
    const stack = [...roots]
    while (stack.length > 0) {
      const pid = stack.pop()!
      if (seen.has(pid)) continue
      seen.add(pid)
      ticks += stats.get(pid)?.ticks ?? 0
      stack.push(...(children.get(pid) ?? []))
    }
    result[name] = ticks
  }
  return { at: performance.now(), groups: result, machine: machineBusyTicks() }
}

export const usageBetween = (start: CpuSnapshot, end: CpuSnapshot): CpuUsage => {
  const processes: Record<string, number> = {}
  for (const [name, ticks] of Object.entries(end.groups)) {
    processes[name] = Math.max(0, ticks - (start.groups[name] ?? 0)) / ticksPerSecond
  }
  return {
    seconds: (end.at - start.at) / 1000,
    processes,
    machineBusy: Math.max(0, end.machine - start.machine) / ticksPerSecond,
    cores: cpus().length
  }
}
