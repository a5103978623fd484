package lockgate.bench.flink;

import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.Metric;
import org.apache.flink.metrics.MetricConfig;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.metrics.reporter.MetricReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;

/**
 * An in-process metric reporter that keeps the {@code numRecordsOut} counters of the source
 * operators (the Kafka source's records, before any filter), so that the main class can tell
 * how many records the job read once it has finished. The counters are kept after the tasks
 * end (a finished task's counter still holds its last count).
 */
public final class SourceCountReporterFactory implements MetricReporterFactory {

    /** the source operators' counters, by the metric group's identifier */
    static final Map<String, Counter> SOURCE_COUNTERS = new ConcurrentHashMap<>();

    static long recordsIn() {
        if (SOURCE_COUNTERS.isEmpty()) {
            return -1;
        }
        long total = 0;
        for (Counter c : SOURCE_COUNTERS.values()) {
            total += c.getCount();
        }
        return total;
    }

    @Override
    public MetricReporter createMetricReporter(Properties properties) {
        return new Reporter();
    }

    static final class Reporter implements MetricReporter {
        @Override
        public void open(MetricConfig config) {}

        @Override
        public void close() {}

        @Override
        public void notifyOfAddedMetric(Metric metric, String metricName, MetricGroup group) {
            if (!(metric instanceof Counter) || !"numRecordsOut".equals(metricName)) {
                return;
            }
            Map<String, String> vars = group.getAllVariables();
            String operator = vars.get("<operator_name>");
            if (operator == null || !operator.startsWith("Source")) {
                return;
            }
            if (System.getenv("FLINK_NEXMARK_DEBUG") != null) {
                System.err.println("source counter: " + group.getMetricIdentifier(metricName));
            }
            SOURCE_COUNTERS.put(group.getMetricIdentifier(metricName), (Counter) metric);
        }

        @Override
        public void notifyOfRemovedMetric(Metric metric, String metricName, MetricGroup group) {
            // keep it: its count is read after the job has finished
        }
    }
}
