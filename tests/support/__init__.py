"""Helpers shared by tests: throwaway certificates, jobs for real workers."""
