package lockgate.bench;

import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.processor.TimestampExtractor;
import org.apache.kafka.streams.state.WindowStore;

/**
 * The Kafka Streams peer of bench/latency.py.
 *
 * <p>Input: JSON values {"k": int, "v": int, "ts": epoch ms} keyed by k (a string key).
 * Topology: groupByKey, TimeWindows.ofSizeWithNoGrace(10 s) on the event time ts (read by
 * a timestamp extractor), count and sum of v as one aggregate, toStream, JSON
 * {"k", "window_start", "count", "sum"} to the output topic.  exactly_once_v2.
 *
 * <p>Arguments: brokers input output application.id state.dir [commit.interval.ms].
 * Without the last one commit.interval.ms stays Kafka Streams' default (100 ms under EOS).
 * Record caching is off (statestore.cache.max.bytes=0) so that every update is emitted, unless
 * -Dcache=on: then Kafka Streams' default cache (10 MB) holds each window's latest value and emits
 * it when the cache flushes, at the latest on commit (as lockgate's emit="update" emits once per batch).
 * Prints RUNNING on stdout once the instance runs; stops on SIGTERM.
 */
public final class KStreamsLatency {

    /** ts of the JSON value; the values are written by bench/latency.py, so a plain scan is enough. */
    static long jsonLong(String json, String field) {
        int at = json.indexOf("\"" + field + "\"");
        int i = json.indexOf(':', at) + 1;
        while (json.charAt(i) == ' ') i++;
        int j = i;
        if (json.charAt(j) == '-') j++;
        while (j < json.length() && Character.isDigit(json.charAt(j))) j++;
        return Long.parseLong(json.substring(i, j));
    }

    public static final class TsExtractor implements TimestampExtractor {
        public TsExtractor() { }

        @Override
        public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
            return jsonLong((String) record.value(), "ts");
        }
    }

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args[3]);
        p.put(StreamsConfig.STATE_DIR_CONFIG, args[4]);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        if (!"on".equals(System.getProperty("cache"))) {
            p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0L);
        }
        p.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        p.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
        p.put(StreamsConfig.DEFAULT_TIMESTAMP_EXTRACTOR_CLASS_CONFIG, TsExtractor.class);
        if (args.length > 5) {
            p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(args[5]));
        }

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(args[1], Consumed.with(Serdes.String(), Serdes.String()))
            .groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
            .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofSeconds(10)))
            // the aggregate is "count,sum" as a string: no custom serde needed
            .aggregate(
                () -> "0,0",
                (key, value, agg) -> {
                    int comma = agg.indexOf(',');
                    long count = Long.parseLong(agg.substring(0, comma)) + 1;
                    long sum = Long.parseLong(agg.substring(comma + 1)) + jsonLong(value, "v");
                    return count + "," + sum;
                },
                Materialized.<String, String, WindowStore<Bytes, byte[]>>with(Serdes.String(), Serdes.String()))
            .toStream()
            .map((wk, agg) -> {
                int comma = agg.indexOf(',');
                String out = "{\"k\":" + wk.key() + ",\"window_start\":" + wk.window().start()
                    + ",\"count\":" + agg.substring(0, comma) + ",\"sum\":" + agg.substring(comma + 1) + "}";
                return KeyValue.pair(wk.key(), out);
            })
            .to(args[2], Produced.with(Serdes.String(), Serdes.String()));

        KafkaStreams streams = new KafkaStreams(builder.build(), p);
        CountDownLatch done = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING) {
                System.out.println("RUNNING");
                System.out.flush();
            }
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                done.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(30));
            done.countDown();
        }));
        streams.start();
        done.await();
    }
}
