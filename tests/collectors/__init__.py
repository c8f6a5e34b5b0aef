"""Tests of the host collectors: parsers on inline text, collectors on fixture trees and on this host."""
