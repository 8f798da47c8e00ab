-- One database per service: each service owns its data (ARCHITECTURE.md, "Data and artifacts").
CREATE DATABASE ingest;
CREATE DATABASE preprocess;
CREATE DATABASE trainer;
CREATE DATABASE registry;
CREATE DATABASE inference;
CREATE DATABASE gateway;
