/**
 * The real services the cluster-mode suites talk to. `npm test` (scripts/test.sh)
 * starts them with scripts/services.sh and exports their URLs; a suite run
 * without them fails loudly instead of skipping.
 */
export const serviceUrl = (name: "DATABASE_URL" | "KAFKA_BROKERS" | "REDIS_URL" | "DYNAMODB_ENDPOINT"): string => {
  const value = process.env[name]
  if (value === undefined || value === "") {
    throw new Error(
      `${name} is not set: run the suites with \`npm test\`, which starts the services (scripts/services.sh)`
    )
  }
  return value
}

/** A name no earlier run used, so suites sharing one service never see each other's data. */
export const uniqueName = (prefix: string): string =>
  `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`
