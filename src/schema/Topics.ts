import { Schedule } from "effect"

/** The Kafka topics Harmony uses and the consumer groups reading them. */
export const MessagesTopic = "chat.messages"
export const EventsTopic = "chat.events"
export const ActorsGroup = "actors"
/** Where an event that does not decode goes, with the reason, so its consumer can move on. */
export const DeadLetterTopic = "chat.events.dlq"

/**
 * Creating a topic can race a fresh broker's metadata ("does not host this
 * topic-partition"): a few retries with backoff cover it.
 */
export const topicRetry = Schedule.exponential("200 millis").pipe(Schedule.jittered, Schedule.upTo({ times: 8 }))
