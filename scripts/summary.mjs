// Prints CI's closing line, "N passed, M failed", from vitest's JSON report.
// A skipped or todo test is no pass: it counts as failed, so it cannot hide.
// A test file that failed before running any test (an import or setup error)
// counts as one failure. Extra failures (typecheck, lint) come as argv[2].
import { existsSync, readFileSync } from "node:fs"

const extra = Number(process.argv[2] ?? 0)
const file = ".test-results/vitest.json"
if (!existsSync(file)) {
  console.log(`0 passed, ${extra + 1} failed`)
  process.exit(0)
}
const report = JSON.parse(readFileSync(file, "utf8"))
const brokenFiles = report.testResults.filter((r) => r.status === "failed" && r.assertionResults.length === 0).length
const failed = report.numFailedTests + report.numPendingTests + report.numTodoTests + brokenFiles + extra
console.log(`${report.numPassedTests} passed, ${failed} failed`)
