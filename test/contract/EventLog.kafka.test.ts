import * as KafkaEventLog from "../../src/adapters/kafka/KafkaEventLog.ts"
import { serviceUrl } from "../support/services.ts"
import { eventLogContract } from "./EventLog.contract.ts"

eventLogContract(
  "KafkaEventLog",
  KafkaEventLog.layer({
    brokers: serviceUrl("KAFKA_BROKERS").split(","),
    clientId: "harmony-contract",
    // Small group timeouts keep rebalances (and so the suite) quick; 6s is the
    // broker's default group.min.session.timeout.ms.
    sessionTimeoutMs: 6_000,
    heartbeatIntervalMs: 1_000,
    rebalanceTimeoutMs: 10_000,
    drainTimeout: "10 seconds"
  })
)
