package lockgate.bench.flink;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.execution.JobClient;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.TableResult;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;

/**
 * One Nexmark query (q0, q1, q2, q3, q4, q5, q7, q8 or q11) in Flink SQL, from the Kafka topics of
 * bids, persons and auctions to a Kafka output topic, exactly-once, in Flink local mode (a
 * MiniCluster in this JVM). The sources are bounded (each reads its topic up to the offsets it
 * finds at start), so the job ends.
 *
 * <pre>
 * java -jar target/flink-nexmark.jar --brokers HOST:PORT --bids TOPIC [--persons TOPIC --auctions TOPIC]
 *      --query q0|q1|q2|q3|q4|q5|q7|q8|q11 --out TOPIC --group GROUPID [--parallelism 1] [--checkpoint-ms 1000]
 *      [--bounded true|false]
 * </pre>
 *
 * Prints one JSON line to stdout at the end: {"query":..,"seconds":..,"records_in":..,"job_seconds":..}
 * (seconds: from the INSERT's submission to the job's end, planning and the local cluster's start
 * included; job_seconds: the job's run time as the JobManager counts it). Logs go to stderr.
 * FLINK_NEXMARK_DEBUG=1 in the environment prints the SQL and its plan to stderr.
 */
public final class FlinkNexmark {

    /** epoch milliseconds (BIGINT) of a TIMESTAMP(3) in the session time zone, which is UTC here */
    private static String epochMs(String ts) {
        return "(CAST(TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', " + ts + ") AS BIGINT) * 1000"
                + " + MOD(EXTRACT(MILLISECOND FROM " + ts + "), 1000))";
    }

    /** the output table's columns of each query */
    static String sinkColumns(String query) {
        switch (query) {
            case "q0":
                return "auction BIGINT, bidder BIGINT, price BIGINT, date_time BIGINT";
            case "q1":
                return "auction BIGINT, bidder BIGINT, price DOUBLE, date_time BIGINT";
            case "q2":
                return "auction BIGINT, price BIGINT";
            case "q7":
                return "window_start BIGINT, window_end BIGINT, auction BIGINT, bidder BIGINT, price BIGINT";
            case "q11":
                return "bidder BIGINT, window_start BIGINT, window_end BIGINT, bids BIGINT";
            case "q3":
                return "name STRING, city STRING, state STRING, id BIGINT";
            case "q4":
                return "category BIGINT, avg_price DOUBLE, auctions BIGINT, PRIMARY KEY (category) NOT ENFORCED";
            case "q5":
                return "auction BIGINT, num BIGINT, window_start BIGINT, window_end BIGINT";
            case "q8":
                return "id BIGINT, name STRING, starttime BIGINT";
            default:
                throw new IllegalArgumentException("unknown query " + query + ": q0, q1, q2, q3, q4, q5, q7, q8, q11");
        }
    }

    /** the SELECT of each query, over the table `bid` */
    static String querySql(String query) {
        switch (query) {
            case "q0":
                return "SELECT auction, bidder, price, date_time FROM bid";
            case "q1":
                // price * 0.908 computed in DOUBLE (as the float oracle does)
                return "SELECT auction, bidder, CAST(price AS DOUBLE) * 0.908 AS price, date_time FROM bid";
            case "q2":
                return "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0";
            case "q7":
                // per 10 s tumbling window: every bid with the window's highest price. Flink's window
                // Top-N takes ROW_NUMBER() only (one row per window), so: the window's MAX(price),
                // window-joined back to the window's bids on the price (the join emits when the window closes).
                return "SELECT " + epochMs("B.window_start") + " AS window_start, "
                        + epochMs("B.window_end") + " AS window_end, B.auction, B.bidder, B.price\n"
                        + "FROM (\n"
                        + "  SELECT auction, bidder, price, window_start, window_end\n"
                        + "  FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))\n"
                        + ") B JOIN (\n"
                        + "  SELECT window_start, window_end, MAX(price) AS maxprice\n"
                        + "  FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))\n"
                        + "  GROUP BY window_start, window_end\n"
                        + ") M ON B.window_start = M.window_start AND B.window_end = M.window_end AND B.price = M.maxprice";
            case "q11":
                // per bidder, sessions with a 10 s gap: the count of bids of each. A session ends where two
                // consecutive bids of the bidder are 10 s or more apart. Flink merges two session windows
                // [t, t + gap) that merely touch, so with a 10 s gap bids exactly 10 s apart would share a
                // session: the gap is 9.999 s (bids <= 9,999 ms apart share one; event time is in ms) and
                // window_end is moved by the 1 ms back to the last bid's time + 10 s.
                return "SELECT bidder, " + epochMs("window_start") + " AS window_start, "
                        + epochMs("window_end") + " + 1 AS window_end, COUNT(*) AS bids\n"
                        + "FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(ts), INTERVAL '9.999' SECOND))\n"
                        + "GROUP BY bidder, window_start, window_end";
            case "q3":
                // the suite's q3: an unbounded (regular) join; Flink keeps every person and auction in its state
                return "SELECT P.name, P.city, P.state, A.id\n"
                        + "FROM auction AS A INNER JOIN person AS P ON A.seller = P.id\n"
                        + "WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')";
            case "q4":
                // the suite's q4: an unbounded join of auctions and their bids, the highest bid per auction, the
                // running average per category (updated with every bid: a changelog, written to an upsert topic).
                // AVG over DOUBLE (the suite's AVG over BIGINT truncates), and the count of auctions beside it.
                return "SELECT Q.category, AVG(CAST(Q.final AS DOUBLE)) AS avg_price, COUNT(*) AS auctions\n"
                        + "FROM (\n"
                        + "  SELECT MAX(B.price) AS final, A.category\n"
                        + "  FROM auction A, bid B\n"
                        + "  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires\n"
                        + "  GROUP BY A.id, A.category\n"
                        + ") Q\n"
                        + "GROUP BY Q.category";
            case "q5":
                // the suite's q5 (window TVF form): per 10 s window sliding by 2 s, the auctions with the most bids;
                // the window bounds are output too, so that the check compares rows, not only (auction, num)
                return "SELECT AuctionBids.auction, AuctionBids.num, " + epochMs("AuctionBids.starttime") + " AS window_start, "
                        + epochMs("AuctionBids.endtime") + " AS window_end\n"
                        + "FROM (\n"
                        + "  SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime\n"
                        + "  FROM TABLE(HOP(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))\n"
                        + "  GROUP BY auction, window_start, window_end\n"
                        + ") AS AuctionBids JOIN (\n"
                        + "  SELECT MAX(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime\n"
                        + "  FROM (\n"
                        + "    SELECT COUNT(*) AS num, window_start AS starttime, window_end AS endtime\n"
                        + "    FROM TABLE(HOP(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))\n"
                        + "    GROUP BY auction, window_start, window_end\n"
                        + "  ) AS CountBids\n"
                        + "  GROUP BY CountBids.starttime, CountBids.endtime\n"
                        + ") AS MaxBids\n"
                        + "ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime"
                        + " AND AuctionBids.num >= MaxBids.maxn";
            case "q8":
                // the suite's q8: persons who opened an auction in the 10 s tumbling window they were created in
                return "SELECT P.id, P.name, " + epochMs("P.starttime") + " AS starttime\n"
                        + "FROM (\n"
                        + "  SELECT id, name, window_start AS starttime, window_end AS endtime\n"
                        + "  FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(ts), INTERVAL '10' SECOND))\n"
                        + "  GROUP BY id, name, window_start, window_end\n"
                        + ") P JOIN (\n"
                        + "  SELECT seller, window_start AS starttime, window_end AS endtime\n"
                        + "  FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(ts), INTERVAL '10' SECOND))\n"
                        + "  GROUP BY seller, window_start, window_end\n"
                        + ") A ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime";
            default:
                throw new IllegalArgumentException("unknown query " + query + ": q0, q1, q2, q3, q4, q5, q7, q8, q11");
        }
    }

    private static void deleteTree(Path root) {
        try (Stream<Path> paths = Files.walk(root)) {
            paths.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (IOException e) {
            // nothing to remove
        }
    }

    /** a bounded, read_committed Kafka JSON source table with event time ts from date_time (watermark delay 0) */
    private static String sourceTable(String name, String topic, String brokers, String group, String columns, boolean bounded) {
        return "CREATE TABLE " + name + " (\n"
                + "  " + columns + ",\n"
                + "  ts AS TO_TIMESTAMP_LTZ(date_time, 3),\n"
                + "  WATERMARK FOR ts AS ts\n"
                + ") WITH (\n"
                + "  'connector' = 'kafka',\n"
                + "  'topic' = " + quote(topic) + ",\n"
                + "  'properties.bootstrap.servers' = " + quote(brokers) + ",\n"
                + "  'properties.group.id' = " + quote(group) + ",\n"
                + "  'properties.isolation.level' = 'read_committed',\n"
                + "  'scan.startup.mode' = 'earliest-offset',\n"
                + (bounded ? "  'scan.bounded.mode' = 'latest-offset',\n" : "")
                + "  'format' = 'json'\n"
                + ")";
    }

    private static String quote(String s) {
        return "'" + s.replace("'", "''") + "'";
    }

    private static void usage(String why) {
        System.err.println(why);
        System.err.println("usage: java -jar flink-nexmark.jar --brokers HOST:PORT --bids TOPIC [--persons TOPIC --auctions TOPIC]"
                + " --query q0|q1|q2|q3|q4|q5|q7|q8|q11 --out TOPIC --group GROUPID [--parallelism 1] [--checkpoint-ms 1000]");
        System.exit(2);
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> opts = new HashMap<>();
        opts.put("parallelism", "1");
        opts.put("checkpoint-ms", "1000");
        opts.put("bounded", "true");
        for (int i = 0; i < args.length; i += 2) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                usage("bad argument: " + args[i]);
            }
            opts.put(args[i].substring(2), args[i + 1]);
        }
        for (String k : new String[] {"brokers", "bids", "query", "out", "group"}) {
            if (!opts.containsKey(k)) {
                usage("missing --" + k);
            }
        }
        String brokers = opts.get("brokers");
        String bids = opts.get("bids");
        String query = opts.get("query").toLowerCase(Locale.ROOT);
        String out = opts.get("out");
        String group = opts.get("group");
        int parallelism = Integer.parseInt(opts.get("parallelism"));
        long checkpointMs = Long.parseLong(opts.get("checkpoint-ms"));
        // unbounded (--bounded false): the job reads on until it is stopped (the latency bench kills it)
        boolean bounded = Boolean.parseBoolean(opts.get("bounded"));
        String columns;
        try {
            columns = sinkColumns(query);
        } catch (IllegalArgumentException e) {
            usage(e.getMessage());
            return;
        }

        // one temporary folder for the run, removed at exit: checkpoints, and Flink's io.tmp.dirs (the
        // local cluster's working folders and the RPC system's jar, which Flink would otherwise leave behind)
        Path runDir = Files.createTempDirectory("flink-nexmark-");
        Runtime.getRuntime().addShutdownHook(new Thread(() -> deleteTree(runDir)));
        Path checkpointDir = Files.createDirectory(runDir.resolve("checkpoints"));
        Path tmpDir = Files.createDirectory(runDir.resolve("tmp"));
        Map<String, String> conf = new HashMap<>();
        conf.put("parallelism.default", Integer.toString(parallelism));
        conf.put("execution.checkpointing.interval", checkpointMs + " ms");
        conf.put("execution.checkpointing.mode", "EXACTLY_ONCE");
        // a bounded job's tasks take a final checkpoint as they finish: the sink's last transaction commits then
        conf.put("execution.checkpointing.checkpoints-after-tasks-finish", "true");
        conf.put("io.tmp.dirs", tmpDir.toString());
        conf.put("web.tmpdir", tmpDir.toString());
        conf.put("web.upload.dir", tmpDir.toString());
        // the local cluster's REST endpoint: loopback only, on a free port
        conf.put("rest.bind-address", "127.0.0.1");
        conf.put("rest.address", "127.0.0.1");
        conf.put("rest.bind-port", "0");
        // checkpoints in files (the JobManager's in-memory storage takes at most 5 MB of state per
        // task, less than q7's window join buffers), in the run's temporary folder
        conf.put("execution.checkpointing.storage", "filesystem");
        conf.put("execution.checkpointing.dir", checkpointDir.toUri().toString());
        // a failing job fails the run after a few tries instead of restarting for ever
        conf.put("restart-strategy.type", "fixed-delay");
        conf.put("restart-strategy.fixed-delay.attempts", "3");
        conf.put("restart-strategy.fixed-delay.delay", "1 s");
        conf.put("metrics.reporter.nexmark.factory.class", SourceCountReporterFactory.class.getName());
        conf.put("table.local-time-zone", "UTC");
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(Configuration.fromMap(conf));
        env.setParallelism(parallelism);
        StreamTableEnvironment tEnv = StreamTableEnvironment.create(env, EnvironmentSettings.inStreamingMode());
        tEnv.getConfig().set("table.local-time-zone", "UTC");

        tEnv.executeSql(sourceTable("bid", bids, brokers, group,
                "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, date_time BIGINT", bounded));
        if (opts.containsKey("persons")) {
            tEnv.executeSql(sourceTable("person", opts.get("persons"), brokers, group,
                    "id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, state STRING, date_time BIGINT", bounded));
        }
        if (opts.containsKey("auctions")) {
            tEnv.executeSql(sourceTable("auction", opts.get("auctions"), brokers, group,
                    "id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, reserve BIGINT, date_time BIGINT,"
                    + " expires BIGINT, seller BIGINT, category BIGINT", bounded));
        }
        // an updating query (q4's running average) writes a changelog: an upsert topic keyed by its primary key
        boolean upsert = columns.contains("PRIMARY KEY");
        tEnv.executeSql("CREATE TABLE nexmark_out (" + columns + ") WITH (\n"
                + (upsert ? "  'connector' = 'upsert-kafka',\n" : "  'connector' = 'kafka',\n")
                + "  'topic' = " + quote(out) + ",\n"
                + "  'properties.bootstrap.servers' = " + quote(brokers) + ",\n"
                // below the broker's transaction.max.timeout.ms (15 min by default); the sink's default is 1 h
                + "  'properties.transaction.timeout.ms' = '600000',\n"
                + "  'sink.delivery-guarantee' = 'exactly-once',\n"
                + "  'sink.transactional-id-prefix' = " + quote("flink-nexmark-" + out + "-" + group) + ",\n"
                + (upsert ? "  'key.format' = 'json',\n  'value.format' = 'json'\n" : "  'format' = 'json'\n")
                + ")");

        String insert = "INSERT INTO nexmark_out\n" + querySql(query);
        if (System.getenv("FLINK_NEXMARK_DEBUG") != null) {
            System.err.println(insert);
            System.err.println(tEnv.explainSql(insert));
        }
        long start = System.nanoTime();
        TableResult result = tEnv.executeSql(insert);
        JobClient job = result.getJobClient().orElseThrow();
        JobExecutionResult done = job.getJobExecutionResult().get();
        double seconds = (System.nanoTime() - start) / 1e9;
        long recordsIn = SourceCountReporterFactory.recordsIn();
        System.err.printf(Locale.ROOT, "flink-nexmark: %s done: %.3f s from submission (planning and the local"
                + " cluster's start included), %.3f s as the JobManager counts the job; %d records in%n",
                query, seconds, done.getNetRuntime() / 1e3, recordsIn);
        System.out.printf(Locale.ROOT, "{\"query\":\"%s\",\"seconds\":%.3f,\"records_in\":%d,\"job_seconds\":%.3f}%n",
                query, seconds, recordsIn, done.getNetRuntime() / 1e3);
        System.out.flush();
        System.exit(0);
    }
}
