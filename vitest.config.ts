import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Integration suites share real services; files run one at a time on two cores.
    fileParallelism: false,
    reporters: ["default", "json"],
    outputFile: { json: ".test-results/vitest.json" }
  }
})
