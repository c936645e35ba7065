/**
 * The bench's final report: a markdown table of absolute figures per target
 * and scenario, the ratios of each Harmony mode to the raw `ws` and Socket.IO
 * baselines measured in the same run, and the issue's targets, met or not.
 */
import { otelSuffix, type ScenarioResult, type TargetResult } from "./common.ts"

export interface RunInfo {
  readonly command: string
  /** Where the measured Harmony ran from. */
  readonly server: string
  readonly startedAt: string
  readonly machine: string
  readonly chats: number
  readonly members: number
  readonly rate: number
  readonly latencySeconds: number
  readonly throughputSeconds: number
  readonly window: number
  readonly warnings: ReadonlyArray<string>
}

const num = (value: number | null | undefined, digits = 0) =>
  value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits)
const ms = (value: number) => (Number.isNaN(value) ? "–" : value < 10 ? value.toFixed(2) : value.toFixed(1))

const lossOf = (target: TargetResult, scenario: ScenarioResult) => {
  const parts: Array<string> = []
  if (scenario.unacked > 0) parts.push(`${scenario.unacked} unacked`)
  if (scenario.sendErrors > 0) parts.push(`${scenario.sendErrors} send errors`)
  if (scenario.missingDeliveries > 0)
    parts.push(`${scenario.missingDeliveries} deliveries still outstanding at the end`)
  if (scenario.disorderedDeliveries > 0) parts.push(`${scenario.disorderedDeliveries} out of order`)
  const closes = Object.entries(scenario.closes)
  if (closes.length > 0) parts.push(`closed: ${closes.map(([code, n]) => `${n}×${code}`).join(", ")}`)
  if (target.verify !== null && scenario.scenario === "throughput") {
    parts.push(
      target.verify.ok
        ? "history ok"
        : `history: ${target.verify.missing} missing, ${target.verify.duplicates} dup, ${target.verify.gapChats} gap chats`
    )
  }
  return parts.length === 0 ? "none" : parts.join("; ")
}

const cpuOf = (scenario: ScenarioResult) => {
  const { processes, seconds, machineBusy, cores } = scenario.cpu
  const share = (cpuSeconds: number) => `${Math.round((100 * cpuSeconds) / seconds)}%`
  const ours = Object.values(processes).reduce((a, b) => a + b, 0)
  const parts = Object.entries(processes)
    .filter(([, cpuSeconds]) => cpuSeconds > 0.05 * seconds)
    .sort((a, b) => b[1] - a[1])
    .map(([name, cpuSeconds]) => `${name} ${share(cpuSeconds)}`)
  parts.push(`other ${share(Math.max(0, machineBusy - ours))}`)
  return `${parts.join(", ")} (of ${cores * 100}%)`
}

export const render = (info: RunInfo, targets: ReadonlyArray<TargetResult>): string => {
  const lines: Array<string> = []
  lines.push(`## Harmony bench — ${info.startedAt}`, "")
  lines.push(`- command: \`${info.command}\``)
  lines.push(`- machine: ${info.machine}`)
  lines.push(`- Harmony: ${info.server}`)
  lines.push(
    `- load: ${info.chats} chats × ${info.members} members (${info.chats * info.members} WebSocket connections, one per member, each subscribed to its chat); ` +
      `latency: ${info.rate} sends/s for ${info.latencySeconds} s after warm-up; throughput: ${info.window} un-acked send(s) per connection for ${info.throughputSeconds} s`
  )
  for (const warning of info.warnings) lines.push(`- warning: ${warning}`)
  lines.push("")
  lines.push(
    "| target | scenario | offered/s | accepted msg/s (min 1 s) | persisted msg/s | deliveries/s | send→deliver p50 / p99 / p999 ms | ack p99 ms | loss / failures | CPU (share of one core) |"
  )
  lines.push("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for (const target of targets) {
    for (const s of target.scenarios) {
      lines.push(
        `| ${target.label} | ${s.scenario} | ${s.offeredRate === null ? "max" : s.offeredRate} | ${num(s.acceptedPerSecond)} (${s.minAcceptedPerSecond}) | ` +
          `${target.target === "harmony" ? num(s.persistedPerSecond) : "n/a"} | ${num(s.deliveriesPerSecond)} | ` +
          `${ms(s.latency.p50)} / ${ms(s.latency.p99)} / ${ms(s.latency.p999)} | ${ms(s.ackLatency.p99)} | ${lossOf(target, s)} | ${cpuOf(s)} |`
      )
    }
  }
  // Where a message's time goes: each stage's p50 / p99 over the window, from the server's /metrics.
  const staged = targets.flatMap((target) =>
    target.scenarios.filter((s) => (s.stages?.length ?? 0) > 0).map((s) => [target, s] as const)
  )
  if (staged.length > 0) {
    lines.push(
      "",
      "Per stage (harmony_message_stage_seconds over the measured window; p50 / p99 ms, observations):",
      ""
    )
    const names = [...new Set(staged.flatMap(([, s]) => (s.stages ?? []).map((stage) => stage.stage)))]
    lines.push(`| target | scenario | ${names.join(" | ")} |`)
    lines.push(`| --- | --- | ${names.map(() => "---").join(" | ")} |`)
    for (const [target, s] of staged) {
      const cells = names.map((name) => {
        const stage = s.stages?.find((candidate) => candidate.stage === name)
        return stage === undefined ? "–" : `${ms(stage.p50)} / ${ms(stage.p99)} (${stage.count})`
      })
      lines.push(`| ${target.label} | ${s.scenario} | ${cells.join(" | ")} |`)
    }
  }

  const notes = targets.flatMap((target) => target.notes.map((note) => `- ${target.label}: ${note}`))
  if (notes.length > 0) lines.push("", ...notes)

  // Ratios: each Harmony mode against each baseline, per scenario.
  const baselines = targets.filter((target) => target.target !== "harmony")
  const harmonies = targets.filter((target) => target.target === "harmony")
  if (baselines.length > 0 && harmonies.length > 0) {
    lines.push("", "Ratios (Harmony ÷ baseline, same run; throughput: higher is better, latency: lower is better):", "")
    lines.push("| harmony | vs | scenario | accepted | deliveries/s | p50 | p99 | p999 |")
    lines.push("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (const harmony of harmonies) {
      for (const baseline of baselines) {
        for (const s of harmony.scenarios) {
          const b = baseline.scenarios.find((candidate) => candidate.scenario === s.scenario)
          if (b === undefined) continue
          const ratio = (a: number, c: number) => (c > 0 && Number.isFinite(a) ? `${(a / c).toFixed(2)}×` : "–")
          lines.push(
            `| ${harmony.label} | ${baseline.label} | ${s.scenario} | ${ratio(s.acceptedPerSecond, b.acceptedPerSecond)} | ` +
              `${ratio(s.deliveriesPerSecond, b.deliveriesPerSecond)} | ${ratio(s.latency.p50, b.latency.p50)} | ` +
              `${ratio(s.latency.p99, b.latency.p99)} | ${ratio(s.latency.p999, b.latency.p999)} |`
          )
        }
      }
    }
  }

  // --otel: each Harmony mode exporting (to a collector that is down, or to a sink) against itself without OTLP.
  const otelPairs = harmonies.flatMap((variant) =>
    (["down", "up"] as const).flatMap((kind) => {
      const suffix = otelSuffix(kind)
      if (!variant.label.endsWith(suffix)) return []
      const off = harmonies.find((candidate) => candidate.label === variant.label.slice(0, -suffix.length))
      return off === undefined ? [] : [[off, variant] as const]
    })
  )
  if (otelPairs.length > 0) {
    lines.push("", "OTLP export ÷ no OTLP (same run; 1.00× = unaffected; latency and server CPU: lower is better):", "")
    lines.push("| harmony | scenario | accepted | deliveries/s | p50 | p99 | p999 | server CPU |")
    lines.push("| --- | --- | --- | --- | --- | --- | --- | --- |")
    const serverCpu = (s: ScenarioResult) => (s.cpu.processes.server ?? Number.NaN) / s.cpu.seconds
    for (const [off, variant] of otelPairs) {
      for (const s of variant.scenarios) {
        const b = off.scenarios.find((candidate) => candidate.scenario === s.scenario)
        if (b === undefined) continue
        const ratio = (a: number, c: number) => (c > 0 && Number.isFinite(a) ? `${(a / c).toFixed(2)}×` : "–")
        lines.push(
          `| ${variant.label} | ${s.scenario} | ${ratio(s.acceptedPerSecond, b.acceptedPerSecond)} | ` +
            `${ratio(s.deliveriesPerSecond, b.deliveriesPerSecond)} | ${ratio(s.latency.p50, b.latency.p50)} | ` +
            `${ratio(s.latency.p99, b.latency.p99)} | ${ratio(s.latency.p999, b.latency.p999)} | ${ratio(serverCpu(s), serverCpu(b))} |`
        )
      }
    }
  }

  // The issue's targets.
  if (harmonies.length > 0) {
    const targetShape = info.chats === 100 && info.members === 10 && info.rate === 1000
    const rawWs = baselines.find((target) => target.target === "ws")
    lines.push("", "Targets:", "")
    for (const harmony of harmonies) {
      const latency = harmony.scenarios.find((s) => s.scenario === "latency")
      const throughput = harmony.scenarios.find((s) => s.scenario === "throughput")
      if (latency !== undefined) {
        const met = latency.latency.p99 <= 50 && latency.acceptedPerSecond >= 0.95 * info.rate
        lines.push(
          `- ${harmony.label}: p99 send→deliver ≤ 50 ms at 1,000 sends/s into 100×10 — ${met ? "MET" : "MISSED"} ` +
            `(p99 ${ms(latency.latency.p99)} ms at ${num(latency.acceptedPerSecond)} accepted/s, ${num(latency.deliveriesPerSecond)} deliveries/s)` +
            (targetShape ? "" : " [not the target shape: rerun with the defaults]")
        )
      }
      if (throughput !== undefined) {
        const lossless =
          harmony.verify?.ok === true &&
          throughput.unacked === 0 &&
          throughput.missingDeliveries === 0 &&
          throughput.sendErrors === 0
        const persisted = throughput.persistedPerSecond ?? 0
        const met =
          throughput.acceptedPerSecond >= 5000 && persisted >= 5000 && lossless && info.throughputSeconds >= 60
        lines.push(
          `- ${harmony.label}: ≥ 5,000 msg/s accepted and persisted for 60 s, zero loss — ${met ? "MET" : "MISSED"} ` +
            `(accepted ${num(throughput.acceptedPerSecond)}/s, lowest second ${throughput.minAcceptedPerSecond}, persisted ${num(throughput.persistedPerSecond)}/s, ` +
            `persist lag ${num(throughput.persistLagSeconds, 1)} s, ${lossless ? "no loss" : "LOSS or failures: see table"})` +
            (info.throughputSeconds >= 60 ? "" : ` [ran ${info.throughputSeconds} s, not 60]`)
        )
        const base = rawWs?.scenarios.find((s) => s.scenario === "throughput")
        if (base !== undefined) {
          const ratio = throughput.deliveriesPerSecond / base.deliveriesPerSecond
          lines.push(
            `- ${harmony.label}: fanout deliveries/s ≥ 0.5× raw ws — ${ratio >= 0.5 ? "MET" : "MISSED"} ` +
              `(${num(throughput.deliveriesPerSecond)} vs ${num(base.deliveriesPerSecond)}: ${ratio.toFixed(2)}×)`
          )
        }
      }
    }
  }
  return lines.join("\n")
}
