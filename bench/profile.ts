/**
 * Summarizes a V8 CPU profile (`node --cpu-prof`): where the samples' self
 * time went by package / source area, the hottest functions, and inclusive
 * time per Harmony source file (any frame of the file on the stack).
 *
 *   npx tsx bench/profile.ts bench/results/profiles/<file>.cpuprofile [startUs endUs]
 */
import { readFileSync } from "node:fs"

interface ProfileNode {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}

interface CpuProfile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
  readonly startTime: number
  readonly endTime: number
}

/** The area a frame belongs to: a package, a folder of src/, node internals, or V8's pseudo-frames. */
const areaOf = (frame: ProfileNode["callFrame"]): string => {
  const url = frame.url
  if (url === "") return frame.functionName.startsWith("(") ? frame.functionName : "(native)"
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (pkg !== null) return pkg[1]!
  const src = /\/src\/([^/]+)\//.exec(url)
  if (src !== null) return `src/${src[1]}`
  if (url.startsWith("node:")) return "node:internal"
  return url.replace(/^file:\/\//, "")
}

const srcFileOf = (url: string): string | undefined => /\/(src\/.+\.ts)$/.exec(url)?.[1]

/** `window`: only samples between these CLOCK_MONOTONIC microseconds (a scenario's sending). */
export const summarize = (path: string, window?: readonly [number, number], top = 25): string => {
  const profile = JSON.parse(readFileSync(path, "utf8")) as CpuProfile
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const parent = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)

  const selfTime = new Map<number, number>()
  let at = profile.startTime
  profile.samples.forEach((id, i) => {
    at += profile.timeDeltas[i] ?? 0
    if (window !== undefined && (at < window[0] || at > window[1])) return
    selfTime.set(id, (selfTime.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
  })
  const total = [...selfTime.values()].reduce((a, b) => a + b, 0)

  const areas = new Map<string, number>()
  const functions = new Map<string, number>()
  const inclusiveSrc = new Map<string, number>()
  const srcOnStack = new Map<number, ReadonlyArray<string>>()
  const stackFiles = (id: number): ReadonlyArray<string> => {
    const known = srcOnStack.get(id)
    if (known !== undefined) return known
    const files = new Set<string>()
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const file = srcFileOf(byId.get(at)!.callFrame.url)
      if (file !== undefined) files.add(file)
    }
    const list = [...files]
    srcOnStack.set(id, list)
    return list
  }
  for (const [id, micros] of selfTime) {
    const frame = byId.get(id)!.callFrame
    const area = areaOf(frame)
    areas.set(area, (areas.get(area) ?? 0) + micros)
    const name = `${frame.functionName || "(anonymous)"} ${frame.url.replace(/^.*\/(node_modules|src)\//, "$1/")}:${frame.lineNumber + 1}`
    functions.set(name, (functions.get(name) ?? 0) + micros)
    for (const file of stackFiles(id)) inclusiveSrc.set(file, (inclusiveSrc.get(file) ?? 0) + micros)
  }

  // Who calls the hottest functions: the nearest frame on their stack from our code or a package.
  const callers = new Map<string, Map<string, number>>()
  const hottest = new Set(
    [...functions]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 6)
      .map(([name]) => name)
  )
  for (const [id, micros] of selfTime) {
    const frame = byId.get(id)!.callFrame
    const name = `${frame.functionName || "(anonymous)"} ${frame.url.replace(/^.*\/(node_modules|src)\//, "$1/")}:${frame.lineNumber + 1}`
    if (!hottest.has(name)) continue
    let caller = "(event loop)"
    for (let at = parent.get(id); at !== undefined; at = parent.get(at)) {
      const url = byId.get(at)!.callFrame.url
      if (/\/(src|node_modules)\//.test(url)) {
        const f = byId.get(at)!.callFrame
        caller = `${f.functionName || "(anonymous)"} ${url.replace(/^.*\/(node_modules|src)\//, "$1/")}:${f.lineNumber + 1}`
        break
      }
    }
    const byCaller = callers.get(name) ?? new Map<string, number>()
    byCaller.set(caller, (byCaller.get(caller) ?? 0) + micros)
    callers.set(name, byCaller)
  }

  const pct = (micros: number) => `${((100 * micros) / total).toFixed(1).padStart(5)}%`
  const table = (title: string, entries: Map<string, number>, count: number) =>
    [
      title,
      ...[...entries]
        .sort((a, b) => b[1] - a[1])
        .slice(0, count)
        .map(([name, micros]) => `  ${pct(micros)}  ${(micros / 1e6).toFixed(2).padStart(7)} s  ${name}`)
    ].join("\n")
  const wall =
    window === undefined
      ? (profile.endTime - profile.startTime) / 1e6
      : (Math.min(window[1], profile.endTime) - Math.max(window[0], profile.startTime)) / 1e6
  const busy = total - (areas.get("(idle)") ?? 0)
  return [
    `profile ${path}${window === undefined ? "" : " (one scenario's window)"}: ${wall.toFixed(1)} s wall, ${(busy / 1e6).toFixed(1)} s on CPU (${((100 * busy) / (wall * 1e6)).toFixed(0)}% of one core)`,
    table("self time by area:", areas, 20),
    table("hottest functions (self):", functions, top),
    table("inclusive time by Harmony source file (on the stack):", inclusiveSrc, 20),
    "nearest package/source caller of the hottest functions:",
    ...[...callers].flatMap(([name, byCaller]) => [
      `  ${name}`,
      ...[...byCaller]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 4)
        .map(([caller, micros]) => `    ${pct(micros)}  ${caller}`)
    ])
  ].join("\n")
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [path, start, end] = process.argv.slice(2)
  if (path === undefined) throw new Error("usage: profile.ts FILE.cpuprofile [startUs endUs]")
  console.log(summarize(path, start !== undefined && end !== undefined ? [Number(start), Number(end)] : undefined))
}
