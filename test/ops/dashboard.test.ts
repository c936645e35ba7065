/**
 * The Grafana dashboard in grafana/ is provisioned by the compose stack's
 * grafana/otel-lgtm container. Grafana only logs a bad dashboard at startup,
 * so these checks catch what it would reject or render empty: malformed JSON,
 * duplicate panel ids, panels outside the 24-column grid, datasources the
 * container does not provision, and queries naming metrics Harmony does not
 * export.
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"
import * as Metrics from "../../src/Metrics.ts"
import { repoRoot } from "../support/harmony.ts"

interface Target {
  readonly refId?: string
  readonly expr?: string
  readonly query?: string | { readonly query: string }
  readonly datasource?: { readonly uid?: string }
}
interface Panel {
  readonly id: number
  readonly type: string
  readonly title: string
  readonly gridPos: { readonly x: number; readonly y: number; readonly w: number; readonly h: number }
  readonly datasource?: { readonly uid?: string }
  readonly targets?: ReadonlyArray<Target>
  readonly panels?: ReadonlyArray<Panel>
}

// The datasource uids grafana/otel-lgtm provisions (its grafana-datasources.yaml).
const provisionedDatasources = new Set(["prometheus", "tempo", "loki"])

const dashboardsDir = join(repoRoot, "grafana", "dashboards")
const dashboardFiles = readdirSync(dashboardsDir).filter((name) => name.endsWith(".json"))

/** Every metric name src/Metrics.ts exports. */
const exported = new Set(
  Object.values(Metrics).flatMap((value) =>
    typeof value === "object" && value !== null && "id" in value && typeof value.id === "string" ? [value.id] : []
  )
)

/** A Prometheus histogram is queried through its _bucket/_sum/_count series. */
const metricOf = (series: string) => series.replace(/_(bucket|sum|count)$/, "")

const balanced = (text: string) => {
  const pairs: Record<string, string> = { ")": "(", "]": "[", "}": "{" }
  const stack: Array<string> = []
  for (const char of text.replace(/"(?:[^"\\]|\\.)*"/g, '""')) {
    if ("([{".includes(char)) stack.push(char)
    else if (char in pairs && stack.pop() !== pairs[char]) return false
  }
  return stack.length === 0
}

describe("Grafana provisioning", () => {
  it("has a dashboard", () => {
    expect(dashboardFiles.length).toBeGreaterThan(0)
    expect(exported.size).toBeGreaterThan(5)
  })

  for (const file of dashboardFiles) {
    describe(file, () => {
      const dashboard = JSON.parse(readFileSync(join(dashboardsDir, file), "utf8"))
      const panels: Array<Panel> = (dashboard.panels as Array<Panel>).flatMap((panel) => [
        panel,
        ...(panel.panels ?? [])
      ])

      it("has what Grafana's provisioning needs", () => {
        expect(dashboard.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/)
        expect(typeof dashboard.title).toBe("string")
        expect(Number.isInteger(dashboard.schemaVersion)).toBe(true)
        // A provisioned dashboard must not carry a database id.
        expect(dashboard.id ?? null).toBeNull()
      })

      it("lays its panels out on the grid with unique ids", () => {
        const ids = panels.map((panel) => panel.id)
        expect(new Set(ids).size).toBe(ids.length)
        for (const { gridPos, title } of panels) {
          expect(gridPos.x + gridPos.w, title).toBeLessThanOrEqual(24)
          expect(gridPos.w > 0 && gridPos.h > 0, title).toBe(true)
        }
      })

      it("queries only provisioned datasources, with well-formed queries", () => {
        for (const panel of panels.filter((panel) => panel.type !== "row")) {
          expect(provisionedDatasources.has(panel.datasource?.uid ?? ""), panel.title).toBe(true)
          expect(panel.targets?.length ?? 0, panel.title).toBeGreaterThan(0)
          for (const target of panel.targets ?? []) {
            expect(provisionedDatasources.has(target.datasource?.uid ?? panel.datasource?.uid ?? ""), panel.title).toBe(
              true
            )
            const query = target.expr ?? (typeof target.query === "string" ? target.query : target.query?.query)
            expect(query, `${panel.title} ${target.refId}`).toBeTruthy()
            expect(balanced(query!), `${panel.title}: ${query}`).toBe(true)
          }
        }
      })

      it("names only metrics Harmony exports", () => {
        const referenced = new Set([...JSON.stringify(dashboard).matchAll(/harmony_[a-z0-9_]+/g)].map(([name]) => name))
        const unknown = [...referenced].map(metricOf).filter((name) => !exported.has(name))
        expect(unknown).toEqual([])
        expect(referenced.size).toBeGreaterThan(10)
      })
    })
  }

  it("is mounted where the lgtm container's provider looks", () => {
    const compose = readFileSync(join(repoRoot, "docker-compose.yml"), "utf8")
    const provider = readFileSync(join(repoRoot, "grafana", "provisioning", "harmony-dashboards.yaml"), "utf8")
    const providerPath = /path:\s*(\S+)/.exec(provider)?.[1]
    expect(providerPath).toBeDefined()
    expect(compose).toContain(`./grafana/dashboards:${providerPath}:ro`)
    expect(compose).toContain(
      "./grafana/provisioning/harmony-dashboards.yaml:/otel-lgtm/grafana/conf/provisioning/dashboards/harmony-dashboards.yaml"
    )
    expect(compose).toMatch(/OTEL_EXPORTER_OTLP_ENDPOINT: http:\/\/lgtm:4318/)
  })
})
