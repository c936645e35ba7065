/** The Kafka topics Harmony uses and the consumer groups reading them. */
export const MessagesTopic = "chat.messages"
export const EventsTopic = "chat.events"
export const ActorsGroup = "actors"
