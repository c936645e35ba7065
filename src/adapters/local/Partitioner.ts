/**
 * Which partition a key goes to: Kafka's default partitioner, so a key lands
 * on the same partition number in embedded and in cluster mode.
 */
const encoder = new TextEncoder()

/**
 * Kafka's murmur2 (the Java client's and kafkajs's default partitioner), so a
 * key lands on the same partition number in embedded and cluster mode.
 */
const murmur2 = (data: Uint8Array): number => {
  const m = 0x5bd1e995
  const length = data.length
  let h = 0x9747b28c ^ length
  const whole = length - (length % 4)
  for (let i = 0; i < whole; i += 4) {
    let k = data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24)
    k = Math.imul(k, m)
    k ^= k >>> 24
    k = Math.imul(k, m)
    h = Math.imul(h, m) ^ k
  }
  const rest = length % 4
  if (rest === 3) h ^= data[whole + 2]! << 16
  if (rest >= 2) h ^= data[whole + 1]! << 8
  if (rest >= 1) {
    h ^= data[whole]!
    h = Math.imul(h, m)
  }
  h ^= h >>> 13
  h = Math.imul(h, m)
  h ^= h >>> 15
  return h | 0
}

/** Partition of `key` among `partitions`, as Kafka's default partitioner computes it. */
export const partitionForKey = (key: string, partitions: number): number =>
  (murmur2(encoder.encode(key)) & 0x7fffffff) % partitions
