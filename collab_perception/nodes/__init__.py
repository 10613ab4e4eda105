"""The ROS 2 nodes (rclpy): each drone's perception, matcher and fusion, and the swarm's bridges and monitors."""
import os

# numpy's OpenBLAS keeps a spinning worker thread per core in every process that uses it; with a dozen node
# processes on one computer, a supporter's plane fit (many tiny SVDs per reply) then starves the other nodes
# of CPU. One BLAS thread per node (a user's own setting wins); numpy has not loaded yet when this runs.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
