/**
 * The per-stage breakdown of Harmony's message path: the server's
 * `harmony_message_stage_seconds` histograms (src/Metrics.ts), read from
 * /metrics before and after a scenario's measured window; the difference of
 * the two is that window's distribution per stage, and its p50 and p99 are
 * interpolated within the histogram's buckets (so they are only as fine as
 * the buckets: 0.1 ms at the bottom, 5–50 ms around tens of ms).
 */

/** Per stage: cumulative bucket counts by upper bound (seconds; Infinity last). */
export type StageHistograms = Map<string, Array<readonly [number, number]>>

export interface StageSummary {
  readonly stage: string
  readonly count: number
  /** Milliseconds. */
  readonly p50: number
  readonly p99: number
}

const bucketLine = /^harmony_message_stage_seconds_bucket\{([^}]*)\} (\S+)/gm

export const scrapeStages = async (url: string): Promise<StageHistograms | undefined> => {
  try {
    const text = await (await fetch(`${url}/metrics`)).text()
    const stages: StageHistograms = new Map()
    for (const match of text.matchAll(bucketLine)) {
      const labels = match[1] ?? ""
      const stage = /stage="([^"]*)"/.exec(labels)?.[1]
      const le = /le="([^"]*)"/.exec(labels)?.[1]
      if (stage === undefined || le === undefined) continue
      const bound = le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le)
      const buckets = stages.get(stage) ?? []
      buckets.push([bound, Number(match[2])])
      stages.set(stage, buckets)
    }
    for (const buckets of stages.values()) buckets.sort((a, b) => a[0] - b[0])
    return stages
  } catch {
    return undefined
  }
}

/** Several nodes' histograms as one (the buckets are the same on every node). */
export const scrapeStagesOf = async (urls: ReadonlyArray<string>): Promise<StageHistograms | undefined> => {
  const scraped = await Promise.all(urls.map(scrapeStages))
  if (scraped.some((stages) => stages === undefined)) return undefined
  const merged: StageHistograms = new Map()
  for (const stages of scraped as Array<StageHistograms>) {
    for (const [stage, buckets] of stages) {
      const sum = new Map(merged.get(stage) ?? [])
      for (const [bound, count] of buckets) sum.set(bound, (sum.get(bound) ?? 0) + count)
      merged.set(
        stage,
        [...sum].sort((a, b) => a[0] - b[0])
      )
    }
  }
  return merged
}

/** The quantile `q` of cumulative buckets, linear within its bucket (the last finite bound when it falls past it). */
const quantile = (buckets: ReadonlyArray<readonly [number, number]>, q: number): number => {
  const total = buckets.at(-1)?.[1] ?? 0
  if (total === 0) return Number.NaN
  const rank = q * total
  let lower = 0
  let below = 0
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (!Number.isFinite(bound)) return lower
      const inside = count - below
      return inside === 0 ? bound : lower + ((bound - lower) * (rank - below)) / inside
    }
    lower = bound
    below = count
  }
  return lower
}

/** Each stage's observations between two scrapes, in the server's stage order. */
export const stagesBetween = (
  before: StageHistograms | undefined,
  after: StageHistograms | undefined,
  order: ReadonlyArray<string>
): Array<StageSummary> => {
  if (after === undefined) return []
  const summaries: Array<StageSummary> = []
  const names = [...order.filter((stage) => after.has(stage)), ...[...after.keys()].filter((s) => !order.includes(s))]
  for (const stage of names) {
    const earlier = new Map(before?.get(stage) ?? [])
    const buckets = (after.get(stage) ?? []).map(
      ([bound, count]) => [bound, count - (earlier.get(bound) ?? 0)] as const
    )
    const count = buckets.at(-1)?.[1] ?? 0
    if (count === 0) continue
    summaries.push({ stage, count, p50: quantile(buckets, 0.5) * 1000, p99: quantile(buckets, 0.99) * 1000 })
  }
  return summaries
}

/** The server's stages in path order (src/Metrics.ts `stages`). */
export const stageOrder = [
  "admit",
  "produce_wait",
  "produce",
  "log",
  "route",
  "publish",
  "fanout",
  "deliver",
  "persist"
]
